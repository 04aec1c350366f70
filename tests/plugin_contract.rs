//! The segmentation plugin, built as a wasm component and as a native
//! library, computes the same per-sample loss and the same gradients as the
//! loss written directly in tch — with respect to the prediction and, through
//! a network in front, with respect to the network input (what PGD needs).
//! Bit for bit, not to a tolerance: the same loss with other rounding (a
//! second log_softmax, a reordered sum) moves every trained run away from
//! its recorded figures, since training amplifies the last bits.

use crate::support;

use amat_host::builtin::dice_ce_loss as reference_loss;
use amat_host::plugin::{CallError, Plugin, SandboxLimits};
use tch::{Device, Kind, Tensor, nn, nn::Module};

const CLASSES: i64 = 3;

fn load_both() -> [Plugin; 2] {
    let limits = SandboxLimits::default();
    [
        Plugin::load(support::wasm_plugin("segmentation"), &limits).expect("wasm plugin loads"),
        Plugin::load(support::native_plugin("segmentation"), &limits).expect("native plugin loads"),
    ]
}

fn random_case(seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let pred = Tensor::randn([4, CLASSES, 8, 8], (Kind::Float, Device::Cpu)) * 2.0;
    let target =
        Tensor::randint(CLASSES, [4, 8, 8], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);
    (pred, target)
}

fn grad_of(pred: &Tensor, loss: &Tensor) -> Tensor {
    let g = Tensor::run_backward(&[loss.sum(Kind::Float)], &[pred], false, false);
    g.into_iter().next().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn plugin_loss_and_prediction_gradient_equal_the_tch_loss() {
    let (pred, target) = random_case(7);
    let pred = pred.set_requires_grad(true);
    let want = reference_loss(&pred, &target);
    let want_grad = grad_of(&pred, &want);
    assert!(want_grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);

    for mut plugin in load_both() {
        let got = plugin.loss(&pred, &target).unwrap();
        assert_eq!(got.size(), [4], "{:?}: one loss per sample", plugin.kind());
        let diff = max_abs_diff(&got, &want);
        assert!(
            got.equal(&want),
            "{:?} loss differs by {diff}",
            plugin.kind()
        );
        let got_grad = grad_of(&pred, &got);
        let diff = max_abs_diff(&got_grad, &want_grad);
        assert!(
            got_grad.equal(&want_grad),
            "{:?} gradient differs by {diff}",
            plugin.kind()
        );
    }
}

#[test]
fn input_gradient_through_a_network_is_the_same_for_wasm_and_native() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::conv2d(
            vs.root() / "c1",
            1,
            4,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        ))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(
            vs.root() / "c2",
            4,
            CLASSES,
            3,
            nn::ConvConfig {
                padding: 1,
                ..Default::default()
            },
        ));
    let x = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let target =
        Tensor::randint(CLASSES, [2, 8, 8], (Kind::Int64, Device::Cpu)).to_kind(Kind::Float);

    let [mut wasm, mut native] = load_both();
    let g_wasm = grad_of(&x, &wasm.loss(&net.forward(&x), &target).unwrap());
    let g_native = grad_of(&x, &native.loss(&net.forward(&x), &target).unwrap());
    let g_ref = grad_of(&x, &reference_loss(&net.forward(&x), &target));

    assert!(
        g_wasm.abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "the input gradient must not vanish"
    );
    assert!(
        g_wasm.equal(&g_native),
        "wasm and native differ by {}",
        max_abs_diff(&g_wasm, &g_native)
    );
    assert!(
        g_wasm.equal(&g_ref),
        "plugin and tch loss differ by {}",
        max_abs_diff(&g_wasm, &g_ref)
    );
}

#[test]
fn a_plugin_error_names_the_plugin_and_the_call() {
    for mut plugin in load_both() {
        let flat = Tensor::zeros([2, 3, 8], (Kind::Float, Device::Cpu));
        let err = plugin.loss(&flat, &flat).unwrap_err();
        assert!(matches!(err.error, Some(CallError::Plugin(_))), "{err}");
        let text = err.to_string();
        assert!(text.contains("plugin `segmentation`"), "{text}");
        assert!(text.contains("loss:"), "{text}");
        assert!(text.contains("prediction must be [B, C, H, W]"), "{text}");
        assert!(!text.contains('\n'));
        // The plugin stays usable after an error.
        let (pred, target) = random_case(1);
        assert!(plugin.loss(&pred, &target).is_ok());
    }
}

#[test]
fn a_failed_host_op_is_an_error_not_a_panic() {
    for mut plugin in load_both() {
        // Channels say 3 classes, the target holds class 7: one-hot cannot fit it.
        let pred = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let target = Tensor::full([1, 4, 4], 7.0, (Kind::Float, Device::Cpu));
        let err = plugin.loss(&pred, &target).unwrap_err();
        assert!(
            matches!(err.error, Some(CallError::HostOp(_))),
            "{:?}: {err}",
            plugin.kind()
        );
        assert!(err.to_string().contains("one-hot"), "{err}");
    }
}

#[test]
fn dice_of_a_perfect_prediction_is_one_for_both_builds() {
    let (_, target) = random_case(5);
    let logits = target
        .to_kind(Kind::Int64)
        .one_hot(CLASSES)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        * 10.0;
    let shifted = logits.roll([1], [3]);
    for mut plugin in load_both() {
        let perfect = plugin.metrics(&logits, &target).unwrap();
        let mean = perfect
            .iter()
            .find(|m| m.name == "dice_mean")
            .unwrap()
            .value;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        let worse = plugin.metrics(&shifted, &target).unwrap();
        let mean = worse.iter().find(|m| m.name == "dice_mean").unwrap().value;
        assert!(mean < 0.9, "a shifted map must score lower: {mean}");
    }
}
