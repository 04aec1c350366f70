//! The native ABI and the SDK's op enums must say what `wit/task.wit` says:
//! same enum cases in the same order (the ABI passes their index), and one
//! host-table function per method of the `tensor` resource, with the
//! arguments and result that method's WIT types lower to.

use crate::support;

use amat_plugin_sdk::abi::HostApi;
use amat_plugin_sdk::types::{BinaryOp, DType, ReduceOp, ScalarOp, UnaryOp};
use wit_parser::{Resolve, Type, TypeDefKind};

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

/// How the native ABI passes a WIT value: its C arguments (a list is a
/// pointer and a length), each as the table writes its type.
fn lowered(resolve: &Resolve, ty: &Type, out: bool) -> Vec<String> {
    let scalar = |t: &Type| -> String {
        match t {
            Type::Bool => "bool",
            Type::U32 => "u32",
            Type::S64 => "i64",
            Type::F32 => "f32",
            Type::F64 => "f64",
            Type::Id(id) => match &resolve.types[*id].kind {
                // The ABI passes an enum case as its index.
                TypeDefKind::Enum(_) => "u32",
                TypeDefKind::Resource | TypeDefKind::Handle(_) => "Handle",
                other => panic!("no native lowering for {other:?}"),
            },
            other => panic!("no native lowering for {other:?}"),
        }
        .to_string()
    };
    if let Type::Id(id) = ty
        && let TypeDefKind::List(elem) = &resolve.types[*id].kind
    {
        let ptr = if out { "*mut" } else { "*const" };
        return vec![format!("{ptr} {}", scalar(elem)), "usize".into()];
    }
    vec![scalar(ty)]
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect()
}

#[test]
fn host_table_signatures_match_the_wit_types() {
    let resolve = load();
    let iface = tensors_interface(&resolve);
    let mut checked = 0;
    for f in iface.functions.values() {
        let Some((_, method)) = f.name.split_once("tensor.") else {
            continue;
        };
        let name = method.replace('-', "_");
        let abi = HostApi::SIGNATURES
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no host-table function for `{}`", f.name));
        // Arguments: each WIT parameter lowered, named as in the WIT (`self`
        // is the handle `t`); a list result becomes an out buffer, and the
        // function returns its status (the rank for `shape`).
        let mut want: Vec<(String, String)> = Vec::new();
        for p in &f.params {
            let arg = match p.name.as_str() {
                "self" => "t".to_string(),
                n => n.replace('-', "_"),
            };
            for (i, ty) in lowered(&resolve, &p.ty, false).into_iter().enumerate() {
                want.push((if i == 0 { arg.clone() } else { String::new() }, ty));
            }
        }
        let result = match &f.result {
            None => "()".to_string(),
            Some(ty) => {
                let low = lowered(&resolve, ty, true);
                if low.len() == 2 {
                    want.push(("out".into(), low[0].clone()));
                    want.push((String::new(), low[1].clone()));
                    "i64".into()
                } else if low[0] == "u32" {
                    // An enum result: its index, or -1 on error.
                    "i64".into()
                } else {
                    low[0].clone()
                }
            }
        };
        let got: Vec<(String, String)> = abi
            .args
            .iter()
            .map(|(n, t)| (n.to_string(), squash(t)))
            .collect();
        assert_eq!(got.len(), want.len(), "`{name}`: {got:?} vs WIT {want:?}");
        for ((gn, gt), (wn, wt)) in got.iter().zip(&want) {
            assert_eq!(*gt, squash(wt), "`{name}`: argument `{gn}`");
            if !wn.is_empty() {
                assert_eq!(gn, wn, "`{name}`: argument names");
            }
        }
        assert_eq!(squash(abi.result), result, "`{name}`: result");
        checked += 1;
    }
    assert_eq!(
        checked + 1,
        HostApi::SIGNATURES.len(),
        "every method but `drop`"
    );
    // The destructor: a handle in, nothing out.
    let drop = HostApi::SIGNATURES
        .iter()
        .find(|s| s.name == "drop")
        .unwrap();
    assert_eq!(drop.args, [("t", "Handle")]);
    assert_eq!(squash(drop.result), "()");
}
