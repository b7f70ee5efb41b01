//! Where the time goes inside one network (`facegate bench profile`): wall time per tract node,
//! aggregated by operator, so an optimisation starts from a measured profile, not a guess.
//!
//! Each model runs on a fixed pseudo-random input (dense convolutions do not care about the
//! values) through the same optimised plan the daemon uses, after untimed warm-up runs; every node
//! is timed around tract's own `eval`. The sum of node times is printed beside the whole-run wall
//! time, so the overhead of the timing itself is visible.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;

/// Time of one operator kind within a model, summed over its nodes.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// tract's operator name (`Conv`, `OptMatMul`, `DepthWise`, ...).
    pub op: String,
    /// Nodes of this kind in the plan.
    pub nodes: usize,
    /// Median over runs of the summed node time, ms.
    pub median_ms: f64,
    /// Share of the summed node time, percent.
    pub share: f64,
}

/// The profile of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelProfile {
    /// Manifest id.
    pub model: String,
    /// Input shape it was planned for.
    pub input: Vec<usize>,
    /// Timed runs.
    pub runs: usize,
    /// Median wall time of one plain (untimed-nodes) run, ms.
    pub run_median_ms: f64,
    /// Median of the summed node times, ms.
    pub nodes_median_ms: f64,
    /// Per operator kind, most expensive first.
    pub ops: Vec<OpTime>,
    /// The most expensive single nodes (name, op, median ms), at most ten.
    pub top_nodes: Vec<(String, String, f64)>,
    /// With `--vs-stock`: the same network planned with tract's own operators only, timed
    /// alternately with ours, so what [`crate::tract_ops`] buys is measured side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_stock: Option<VsStock>,
}

/// Whole-run medians of our lowering and tract's stock lowering of one network, interleaved.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VsStock {
    /// Median ms with [`crate::models::Lowering::Facegate`] (what the daemon runs).
    pub facegate_ms: f64,
    /// Median ms with [`crate::models::Lowering::TractStock`].
    pub stock_ms: f64,
    /// `facegate_ms / stock_ms` (< 1: ours is faster).
    pub ratio: f64,
}

impl std::fmt::Display for ModelProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} {:?}: run median {:.2} ms, node sum {:.2} ms ({} runs, {} inference thread(s))",
            self.model,
            self.input,
            self.run_median_ms,
            self.nodes_median_ms,
            self.runs,
            crate::models::inference_threads()
        )?;
        writeln!(
            f,
            "  {:<28} {:>5} {:>10} {:>7}",
            "op", "nodes", "median ms", "share"
        )?;
        for o in &self.ops {
            writeln!(
                f,
                "  {:<28} {:>5} {:>10.3} {:>6.1}%",
                o.op, o.nodes, o.median_ms, o.share
            )?;
        }
        writeln!(f, "  slowest nodes:")?;
        for (name, op, ms) in &self.top_nodes {
            writeln!(f, "    {ms:>8.3} ms  {op:<20} {name}")?;
        }
        if let Some(v) = &self.vs_stock {
            writeln!(
                f,
                "  vs tract's own operators, interleaved: ours {:.2} ms, tract stock {:.2} ms, ratio {:.2}",
                v.facegate_ms, v.stock_ms, v.ratio
            )?;
        }
        Ok(())
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Profile `plan` on an input of `shape` (values 0..255, fixed seed), `runs` timed runs.
pub fn profile(
    model: &str,
    plan: &Arc<TypedRunnableModel>,
    shape: &[usize],
    runs: usize,
) -> TractResult<ModelProfile> {
    let runs = runs.max(1);
    let input = fixed_input(shape)?;
    let mut state = plan.spawn()?;
    for _ in 0..3 {
        state.run(tvec![input.clone()])?;
    }
    let mut wall = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        state.run(tvec![input.clone()])?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Per node: (op name, samples).
    let mut per_node: HashMap<usize, (String, String, Vec<f64>)> = HashMap::new();
    let mut sums = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut this_run: Vec<(usize, String, String, Duration)> = Vec::new();
        state.run_plan_with_eval(tvec![input.clone()], |ctx, op_state, node, inputs| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            this_run.push((
                node.id,
                node.name.clone(),
                node.op().name().to_string(),
                t.elapsed(),
            ));
            out
        })?;
        let mut sum = 0.0;
        for (id, name, op, d) in this_run {
            let ms = d.as_secs_f64() * 1e3;
            sum += ms;
            per_node
                .entry(id)
                .or_insert_with(|| (name, op, Vec::new()))
                .2
                .push(ms);
        }
        sums.push(sum);
    }
    let mut nodes: Vec<(String, String, f64)> = per_node
        .into_values()
        .map(|(name, op, mut s)| (name, op, median(&mut s)))
        .collect();
    let mut by_op: HashMap<String, (usize, f64)> = HashMap::new();
    for (_, op, ms) in &nodes {
        let e = by_op.entry(op.clone()).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let total: f64 = by_op.values().map(|v| v.1).sum::<f64>().max(1e-9);
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (nodes, ms))| OpTime {
            op,
            nodes,
            median_ms: ms,
            share: 100.0 * ms / total,
        })
        .collect();
    ops.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    nodes.sort_by(|a, b| b.2.total_cmp(&a.2));
    nodes.truncate(10);
    Ok(ModelProfile {
        model: model.to_string(),
        input: shape.to_vec(),
        runs,
        run_median_ms: median(&mut wall),
        nodes_median_ms: median(&mut sums),
        ops,
        top_nodes: nodes,
        vs_stock: None,
    })
}

/// Values 0..255 from a fixed seed: every profile of a shape sees the same input.
fn fixed_input(shape: &[usize]) -> TractResult<TValue> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..255.0)).collect();
    Ok(Tensor::from_shape(shape, &data)?.into())
}

/// Median whole-run times of `ours` and `stock` (two plans of one network) on the same input,
/// one run of each per round after warm-up, so both see the same machine at the same moment.
pub fn vs_stock(
    ours: &Arc<TypedRunnableModel>,
    stock: &Arc<TypedRunnableModel>,
    shape: &[usize],
    runs: usize,
) -> TractResult<VsStock> {
    let input = fixed_input(shape)?;
    let (mut a, mut b) = (ours.spawn()?, stock.spawn()?);
    for _ in 0..3 {
        a.run(tvec![input.clone()])?;
        b.run(tvec![input.clone()])?;
    }
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        a.run(tvec![input.clone()])?;
        ta.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        b.run(tvec![input.clone()])?;
        tb.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (facegate_ms, stock_ms) = (median(&mut ta), median(&mut tb));
    Ok(VsStock {
        facegate_ms,
        stock_ms,
        ratio: facegate_ms / stock_ms.max(1e-9),
    })
}
