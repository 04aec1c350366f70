//! The native ABI and the SDK's op enums must say what `wit/task.wit` says:
//! same enum cases in the same order (the ABI passes their index) and one
//! host-table function per method of the `tensor` resource.

use crate::support;

use amat_plugin_sdk::abi::HostApi;
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use wit_parser::{Resolve, TypeDefKind};

fn tensors_interface(resolve: &Resolve) -> &wit_parser::Interface {
    resolve
        .interfaces
        .iter()
        .map(|(_, i)| i)
        .find(|i| i.name.as_deref() == Some("tensors"))
        .expect("interface `tensors` in wit/")
}

fn load() -> Resolve {
    let mut resolve = Resolve::new();
    resolve
        .push_path(support::root().join("wit"))
        .expect("wit/ parses");
    resolve
}

#[test]
fn op_enums_match_the_wit_cases_in_order() {
    let resolve = load();
    let iface = tensors_interface(&resolve);
    let cases = |name: &str| -> Vec<String> {
        let id = iface.types[name];
        match &resolve.types[id].kind {
            TypeDefKind::Enum(e) => e.cases.iter().map(|c| c.name.clone()).collect(),
            other => panic!("`{name}` is not an enum: {other:?}"),
        }
    };
    assert_eq!(cases("dtype"), DType::WIT_NAMES);
    assert_eq!(cases("unary-op"), UnaryOp::WIT_NAMES);
    assert_eq!(cases("binary-op"), BinaryOp::WIT_NAMES);
    assert_eq!(cases("scalar-op"), ScalarOp::WIT_NAMES);
    assert_eq!(cases("reduce-op"), ReduceOp::WIT_NAMES);
}

#[test]
fn host_table_has_one_function_per_tensor_method() {
    let resolve = load();
    let iface = tensors_interface(&resolve);
    let wit_methods: Vec<String> = iface
        .functions
        .keys()
        .filter_map(|k| k.split_once("tensor.").map(|(_, m)| m.replace('-', "_")))
        .collect();
    // `drop` is the resource's destructor, which WIT does not list as a method.
    let abi: Vec<&str> = HostApi::FUNCTIONS
        .iter()
        .copied()
        .filter(|f| *f != "drop")
        .collect();
    assert_eq!(wit_methods, abi);
}
