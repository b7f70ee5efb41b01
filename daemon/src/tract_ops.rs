//! Operators we hand tract where its own lowering of an ONNX operator is slow on our networks.
//!
//! `facegate bench profile` shows where tract spends its time. Two ONNX operators cost far more
//! than their arithmetic, and [`onnx_loader_ops`] registers our own for them:
//!
//! - `PRelu`: tract expands it into three whole-tensor passes (`x * slope`, `0 > x` into a boolean
//!   tensor, `Iff`), which took 41 % of SFace and about half of each MiniFASNet on this machine,
//!   more than every convolution's matrix product together. [`Prelu`] is one in-place pass
//!   computing `if 0 > x { x * slope } else { x }`, the expression tract's expansion computes
//!   element by element.
//! - `MaxPool` 2×2 with stride 2 and no padding (YuNet's four pools): tract's fast path covers
//!   stride 1 only, so stride 2 walks every output with bounds checks (19 % of YuNet).
//!   [`MaxPool2x2`] folds the same four taps in the same order with the same `max`. Every other
//!   pool goes to tract's own implementation.
//!
//! Outputs are bit-identical to tract's: unit tests compare [`Prelu`] with the expansion on
//! signs, zeros, NaN and broadcast shapes, and the golden test
//! `faster_operators_and_thread_counts_change_no_bit` compares all six networks planned with
//! and without these operators.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// What tract's operator register maps an ONNX op type to.
type OpBuilder = fn(
    &tract_onnx::model::ParsingContext,
    &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `MaxPool` builder, kept for every pool [`MaxPool2x2`] does not cover.
static TRACT_MAX_POOL: std::sync::OnceLock<Option<OpBuilder>> = std::sync::OnceLock::new();

/// Replace tract's `PRelu` builder in `onnx` by [`Prelu`] and route 2×2 stride-2 `MaxPool`s to
/// [`MaxPool2x2`]; every other operator is unchanged.
pub fn onnx_loader_ops(mut onnx: tract_onnx::Onnx) -> tract_onnx::Onnx {
    let original = onnx.op_register.0.get("MaxPool").copied();
    TRACT_MAX_POOL.get_or_init(|| original);
    onnx.op_register.insert("PRelu", prelu_builder);
    if TRACT_MAX_POOL.get().copied().flatten().is_some() {
        onnx.op_register.insert("MaxPool", max_pool_builder);
    }
    onnx
}

/// Whether an ONNX `MaxPool` node is exactly a 2×2 window, stride 2, no padding, no dilation,
/// floor rounding, one output: the case [`MaxPool2x2`] implements.
fn is_plain_2x2_s2(node: &NodeProto) -> bool {
    if node.output.len() != 1 {
        return false;
    }
    let ints = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.ints)
    };
    let int = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let auto_pad = node
        .attribute
        .iter()
        .find(|a| a.name == "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned());
    ints("kernel_shape").is_some_and(|k| k[..] == [2, 2])
        && ints("strides").is_some_and(|s| s[..] == [2, 2])
        && ints("pads").is_none_or(|p| p.iter().all(|&x| x == 0))
        && ints("dilations").is_none_or(|d| d.iter().all(|&x| x == 1))
        && int("ceil_mode").is_none_or(|c| c == 0)
        && auto_pad.is_none_or(|a| a == "NOTSET" || a == "VALID")
}

fn max_pool_builder(
    ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let Some(tract_builder) = TRACT_MAX_POOL.get().copied().flatten() else {
        bail!(
            "MaxPool {}: tract's MaxPool builder is not registered",
            node.name
        );
    };
    let (op, extra) = tract_builder(ctx, node)?;
    if !is_plain_2x2_s2(node) {
        return Ok((op, extra));
    }
    // Keep tract's expansion for shape inference and as the fallback when wiring.
    match op.as_op().downcast_ref::<Box<dyn Expansion>>() {
        Some(fallback) => Ok((
            expand(MaxPool2x2Expansion {
                fallback: fallback.clone(),
            }),
            extra,
        )),
        None => Ok((op, extra)),
    }
}

/// A 2×2 stride-2 `MaxPool` at inference-model level: tract's rules; wires [`MaxPool2x2`] for
/// rank-4 `f32` inputs of known size, tract's own pool otherwise.
#[derive(Debug, Clone)]
struct MaxPool2x2Expansion {
    fallback: Box<dyn Expansion>,
}

impl Expansion for MaxPool2x2Expansion {
    fn name(&self) -> StaticName {
        "MaxPool".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.fallback.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?;
        if fact.datum_type == f32::datum_type()
            && fact.rank() == 4
            && fact.shape.as_concrete().is_some()
        {
            model.wire_node(name, MaxPool2x2, &inputs[..1])
        } else {
            self.fallback.wire(name, model, inputs)
        }
    }
}

/// Max over each 2×2 block of an NCHW `f32` tensor (stride 2, no padding, odd edges dropped).
/// Each output folds `f32::MIN.max(a).max(b).max(c).max(d)` over its taps in row-major order,
/// exactly as tract's 2×2 pool does.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct MaxPool2x2;

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "FacegateMaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let &[n, c, h, w] = x.shape() else {
            bail!("MaxPool2x2 wants an NCHW input, got {:?}", x.shape());
        };
        let (oh, ow) = (h / 2, w / 2);
        let mut out = Tensor::zero::<f32>(&[n, c, oh, ow])?;
        let plain = x.try_as_plain_ram()?;
        let src = plain.as_slice::<f32>()?;
        {
            let mut out_plain = out.try_as_plain_ram_mut()?;
            let dst = out_plain.as_slice_mut::<f32>()?;
            if oh > 0 && ow > 0 {
                for (plane, out_plane) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow))
                {
                    for (y, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
                        let r0 = &plane[2 * y * w..2 * y * w + 2 * ow];
                        let r1 = &plane[(2 * y + 1) * w..(2 * y + 1) * w + 2 * ow];
                        for ((o, a), b) in out_row
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            *o = f32::MIN.max(a[0]).max(a[1]).max(b[0]).max(b[1]);
                        }
                    }
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        if s.rank() != 4 {
            bail!("MaxPool2x2 wants a rank-4 input, got {s:?}");
        }
        let half = |d: &TDim| -> TractResult<TDim> {
            let v = d
                .to_usize()
                .map_err(|_| format_err!("MaxPool2x2 needs a known spatial size, got {d}"))?;
            Ok((v / 2).to_dim())
        };
        let shape = tvec![s[0].clone(), s[1].clone(), half(&s[2])?, half(&s[3])?];
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

fn prelu_builder(
    _ctx: &tract_onnx::model::ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(PreluExpansion), vec![]))
}

/// ONNX `PRelu` at inference-model level: same shape rules as tract's, wires one [`Prelu`].
#[derive(Debug, Clone, Hash)]
struct PreluExpansion;

impl Expansion for PreluExpansion {
    fn name(&self) -> StaticName {
        "Prelu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        if dt != f32::datum_type() || model.outlet_fact(inputs[1])?.datum_type != dt {
            bail!("PRelu {name}: only f32 inputs are supported (got {dt:?})");
        }
        model.wire_node(name, Prelu, inputs)
    }
}

/// `y = if 0 > x { x * slope } else { x }` in one pass, in place when tract hands over the only
/// reference to `x`. The slope broadcasts to `x` as ONNX says (right-aligned); the common
/// per-channel (`[C, 1, 1]` on NCHW) and scalar slopes take a vectorisable fast path.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Prelu;

impl Op for Prelu {
    fn name(&self) -> StaticName {
        "FacegatePrelu".into()
    }

    op_as_typed_op!();
}

/// One channel's run, written as an unconditional store of a select so the compiler vectorises
/// it (compare, multiply, blend); a conditional store compiles to a branch per element, which
/// mispredicts on half of them.
#[inline]
fn prelu_run(xs: &mut [f32], s: f32) {
    for v in xs {
        *v = prelu(*v, s);
    }
}

/// The element expression of tract's PRelu expansion.
#[inline]
fn prelu(x: f32, s: f32) -> f32 {
    if 0.0 > x { x * s } else { x }
}

/// If `slope` (right-aligned against `x_shape`) has extent 1 on every axis but possibly axis 1,
/// the channel count it varies over (1 for a scalar slope).
fn per_channel(x_shape: &[usize], slope_shape: &[usize]) -> Option<usize> {
    if slope_shape.len() > x_shape.len() {
        return None;
    }
    let offset = x_shape.len() - slope_shape.len();
    let mut channels = 1;
    for (i, &d) in slope_shape.iter().enumerate() {
        let axis = offset + i;
        if d == 1 {
            continue;
        }
        if axis != 1 || d != x_shape[1] {
            return None;
        }
        channels = d;
    }
    Some(channels)
}

impl EvalOp for Prelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, slope) = args_2!(inputs);
        let mut x = x.into_tensor();
        let x_shape: TVec<usize> = x.shape().into();
        let slope_shape: TVec<usize> = slope.shape().into();
        match per_channel(&x_shape, &slope_shape) {
            Some(channels) if x_shape.len() >= 2 || channels == 1 => {
                let slope = slope.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                let inner: usize = x_shape.iter().skip(2).product();
                let mut plain = x.try_as_plain_ram_mut()?;
                let data = plain.as_slice_mut::<f32>()?;
                if channels == 1 {
                    prelu_run(data, slope[0]);
                } else {
                    for (i, run) in data.chunks_exact_mut(inner.max(1)).enumerate() {
                        prelu_run(run, slope[i % channels]);
                    }
                }
            }
            _ => {
                let s = slope.to_plain_array_view::<f32>()?;
                let mut xv = x.to_plain_array_view_mut::<f32>()?;
                let sb = s.broadcast(xv.shape()).ok_or_else(|| {
                    format_err!("PRelu slope {slope_shape:?} does not broadcast to {x_shape:?}")
                })?;
                tract_ndarray::Zip::from(&mut xv)
                    .and(&sb)
                    .for_each(|v, &s| *v = prelu(*v, s));
            }
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for Prelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's own expansion of PRelu, evaluated element by element: what we must equal.
    fn reference(x: &[f32], s: impl Fn(usize) -> f32) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| if 0.0 > v { v * s(i) } else { v })
            .collect()
    }

    fn run(x: Tensor, slope: Tensor) -> Vec<f32> {
        let out = Prelu
            .eval(
                &EvalContext::out_of_plan(),
                tvec![x.into_tvalue(), slope.into_tvalue()],
            )
            .unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn same_bits(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn per_channel_scalar_and_general_broadcasts_match_the_expansion() {
        let special = [
            0.0f32,
            -0.0,
            1.5,
            -1.5,
            f32::NAN,
            -f32::INFINITY,
            f32::MIN_POSITIVE,
        ];
        let (c, h, w) = (3usize, 2usize, 5usize);
        let x: Vec<f32> = (0..2 * c * h * w)
            .map(|i| {
                if i < special.len() {
                    special[i]
                } else {
                    (i as f32 * 0.37).sin() * 4.0
                }
            })
            .collect();
        let slopes = [0.25f32, -0.5, 1.75];
        let xt = || Tensor::from_shape(&[2, c, h, w], &x).unwrap();
        let per_c = |i: usize| slopes[(i / (h * w)) % c];
        // [C,1,1] (ONNX's usual per-channel form), [C,1,1] as rank 4, and a scalar slope.
        same_bits(
            &run(xt(), Tensor::from_shape(&[c, 1, 1], &slopes).unwrap()),
            &reference(&x, per_c),
        );
        same_bits(
            &run(xt(), Tensor::from_shape(&[1, c, 1, 1], &slopes).unwrap()),
            &reference(&x, per_c),
        );
        same_bits(
            &run(xt(), Tensor::from_shape(&[1], &[0.1f32]).unwrap()),
            &reference(&x, |_| 0.1),
        );
        // A slope varying along the last axis takes the general broadcast path.
        let sw: Vec<f32> = (0..w).map(|i| i as f32 * 0.1 - 0.2).collect();
        same_bits(
            &run(xt(), Tensor::from_shape(&[w], &sw).unwrap()),
            &reference(&x, |i| sw[i % w]),
        );
        // A slope that does not broadcast is an error, not a panic.
        let bad = Prelu.eval(
            &EvalContext::out_of_plan(),
            tvec![
                xt().into_tvalue(),
                Tensor::from_shape(&[4], &[1f32; 4]).unwrap().into_tvalue()
            ],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn channel_detection() {
        assert_eq!(per_channel(&[1, 64, 8, 8], &[64, 1, 1]), Some(64));
        assert_eq!(per_channel(&[1, 64, 8, 8], &[1]), Some(1));
        assert_eq!(per_channel(&[1, 64], &[64]), Some(64));
        assert_eq!(per_channel(&[1, 64, 8, 8], &[8]), None);
        assert_eq!(per_channel(&[1, 64, 8, 8], &[1, 1, 64, 1, 1]), None);
    }
}
