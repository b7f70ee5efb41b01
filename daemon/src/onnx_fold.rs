//! Load-time folding of constant `DequantizeLinear` nodes, so block-quantized ONNX files run in tract.
//!
//! OpenCV Zoo ships SFace (and YuNet) as *int8 block-quantized* files: weights are stored as int8
//! with one fp32 scale (and zero point) per block of `block_size` elements along `axis`, and a
//! `DequantizeLinear` node (opset 21) turns them back into fp32 at run time. tract 0.23 refuses the
//! `block_size` attribute. Since every such node here has constant inputs (initializers), we compute
//! its fp32 output once, replace the node by an fp32 initializer, and drop graph inputs nobody reads
//! (the file also declares 29 unused weight inputs that tract would otherwise demand values for).
//! The result is numerically what onnxruntime computes for the node, so the folded model matches
//! onnxruntime on the original file (checked by a golden test to 1e-4).

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{self, tensor_proto::DataType};

/// Why a model could not be folded. Always names the node or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The model has no graph.
    #[error("ONNX model has no graph")]
    NoGraph,
    /// A tensor's declared shape and its data disagree, or a type is unsupported.
    #[error("DequantizeLinear {node}: {why}")]
    Node {
        /// Node name (or its output when unnamed).
        node: String,
        /// What is wrong.
        why: String,
    },
}

/// What folding did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FoldReport {
    /// DequantizeLinear nodes replaced by fp32 constants.
    pub folded_nodes: usize,
    /// Graph inputs removed because no node reads them, or because an initializer provides them.
    pub dropped_inputs: usize,
    /// Initializers removed because nothing reads them after folding (the int8 originals).
    pub dropped_initializers: usize,
}

/// Fold every `DequantizeLinear` whose inputs are all initializers into an fp32 initializer,
/// then prune inputs and initializers nothing reads. Nodes with non-constant inputs are left
/// alone (tract handles ordinary per-tensor/per-axis quantization itself).
pub fn fold_constant_dequantize(model: &mut pb::ModelProto) -> Result<FoldReport, FoldError> {
    let graph = model.graph.as_mut().ok_or(FoldError::NoGraph)?;
    let mut report = FoldReport::default();

    let init_index: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();

    let mut new_inits = Vec::new();
    let mut keep_nodes = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let foldable = node.op_type == "DequantizeLinear"
            && node.domain.is_empty()
            && !node.input.is_empty()
            && node
                .input
                .iter()
                .all(|i| i.is_empty() || init_index.contains_key(i));
        if !foldable {
            keep_nodes.push(node);
            continue;
        }
        let get = |k: usize| {
            node.input
                .get(k)
                .filter(|n| !n.is_empty())
                .map(|n| &graph.initializer[init_index[n]])
        };
        let name = if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let err = |why: String| FoldError::Node {
            node: name.clone(),
            why,
        };
        let x = get(0).ok_or_else(|| err("missing input x".into()))?;
        let scale = get(1).ok_or_else(|| err("missing x_scale".into()))?;
        let zero = get(2);
        let axis = attr_int(&node, "axis").unwrap_or(1);
        let block_size = attr_int(&node, "block_size").unwrap_or(0);
        let out_name = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| err("no output".into()))?;
        let values = dequantize(x, scale, zero, axis, block_size).map_err(err)?;
        new_inits.push(pb::TensorProto {
            name: out_name,
            dims: x.dims.clone(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        report.folded_nodes += 1;
    }
    graph.node = keep_nodes;
    graph.initializer.extend(new_inits);

    // Everything still read by a node or exported as a graph output is live.
    let mut live: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    live.extend(graph.output.iter().map(|o| o.name.clone()));
    // Subgraphs (If/Loop bodies) may capture outer values by name: count those reads too.
    for n in &graph.node {
        for a in &n.attribute {
            for g in a.g.iter().chain(a.graphs.iter()) {
                collect_subgraph_reads(g, &mut live);
            }
        }
    }

    let before = graph.initializer.len();
    graph.initializer.retain(|t| live.contains(&t.name));
    report.dropped_initializers = before - graph.initializer.len();

    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let before = graph.input.len();
    let inputs = std::mem::take(&mut graph.input);
    graph.input = inputs
        .into_iter()
        .filter(|i| live.contains(&i.name) && !inits.contains(i.name.as_str()))
        .collect();
    report.dropped_inputs = before - graph.input.len();
    Ok(report)
}

fn collect_subgraph_reads(g: &pb::GraphProto, live: &mut HashSet<String>) {
    for n in &g.node {
        live.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for sg in a.g.iter().chain(a.graphs.iter()) {
                collect_subgraph_reads(sg, live);
            }
        }
    }
}

fn attr_int(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn numel(dims: &[i64]) -> Result<usize, String> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| format!("invalid dims {dims:?}"))
    })
}

/// Integer contents of a quantized tensor, widened to i32.
fn int_values(t: &pb::TensorProto) -> Result<Vec<i32>, String> {
    let n = numel(&t.dims)?;
    let dt =
        DataType::try_from(t.data_type).map_err(|_| format!("unknown type {}", t.data_type))?;
    let raw = &t.raw_data;
    let v: Vec<i32> = match dt {
        DataType::Int8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as i32).collect(),
        DataType::Uint8 if !raw.is_empty() => raw.iter().map(|&b| b as i32).collect(),
        DataType::Int16 if !raw.is_empty() => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        DataType::Uint16 if !raw.is_empty() => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        DataType::Int32 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        // Without raw_data, ONNX stores all these small integer types in int32_data.
        DataType::Int8 | DataType::Uint8 | DataType::Int16 | DataType::Uint16 | DataType::Int32 => {
            t.int32_data.clone()
        }
        other => {
            return Err(format!(
                "{} has unsupported quantized type {other:?}",
                t.name
            ));
        }
    };
    if v.len() != n {
        return Err(format!(
            "{} holds {} values, its dims {:?} need {n}",
            t.name,
            v.len(),
            t.dims
        ));
    }
    Ok(v)
}

fn float_values(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    let n = numel(&t.dims)?;
    let v: Vec<f32> = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Ok(DataType::Float) => t.float_data.clone(),
        _ => {
            return Err(format!(
                "{} scale type {} is not float32",
                t.name, t.data_type
            ));
        }
    };
    if v.len() != n {
        return Err(format!(
            "{} holds {} values, its dims {:?} need {n}",
            t.name,
            v.len(),
            t.dims
        ));
    }
    Ok(v)
}

/// `y = (x - zero_point) * scale` with ONNX's broadcasting rules for per-tensor (scalar scale),
/// per-axis (1-D scale along `axis`) and blocked (scale has x's rank, `ceil(d/block)` along `axis`).
fn dequantize(
    x: &pb::TensorProto,
    scale: &pb::TensorProto,
    zero: Option<&pb::TensorProto>,
    axis: i64,
    block_size: i64,
) -> Result<Vec<f32>, String> {
    let xv = int_values(x)?;
    let sv = float_values(scale)?;
    let zv = match zero {
        Some(z) => int_values(z)?,
        None => vec![0; sv.len()],
    };
    if zv.len() != sv.len() {
        return Err("zero point and scale differ in size".into());
    }
    let rank = x.dims.len() as i64;
    let dims: Vec<usize> = x.dims.iter().map(|&d| d as usize).collect();
    if sv.len() == 1 {
        return Ok(xv.iter().map(|&q| (q - zv[0]) as f32 * sv[0]).collect());
    }
    let axis = if axis < 0 { axis + rank } else { axis };
    if axis < 0 || axis >= rank {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    let axis = axis as usize;
    // Strides of x (row-major) to recover the coordinate along `axis` and the others.
    let inner: usize = dims[axis + 1..].iter().product();
    let d_axis = dims[axis];
    if block_size <= 0 {
        if sv.len() != d_axis {
            return Err(format!(
                "per-axis scale has {} values, axis {axis} has {d_axis}",
                sv.len()
            ));
        }
        return Ok(xv
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let k = (i / inner) % d_axis;
                (q - zv[k]) as f32 * sv[k]
            })
            .collect());
    }
    let b = block_size as usize;
    let blocks = d_axis.div_ceil(b);
    let mut sdims = dims.clone();
    sdims[axis] = blocks;
    let expect: usize = sdims.iter().product();
    if scale.dims.iter().map(|&d| d as usize).collect::<Vec<_>>() != sdims || sv.len() != expect {
        return Err(format!(
            "blocked scale dims {:?} do not match x dims {:?} with block {b} on axis {axis}",
            scale.dims, x.dims
        ));
    }
    Ok(xv
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let outer = i / (inner * d_axis);
            let k = (i / inner) % d_axis;
            let r = i % inner;
            let si = (outer * blocks + k / b) * inner + r;
            (q - zv[si]) as f32 * sv[si]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t_i8(name: &str, dims: &[i64], v: &[i8]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int8 as i32,
            raw_data: v.iter().map(|&x| x as u8).collect(),
            ..Default::default()
        }
    }
    fn t_f32(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn blocked_dequantize_along_axis_1() {
        // x: 2x5, block 2 along axis 1 -> 3 blocks per row (the last one short).
        let x = t_i8("x", &[2, 5], &[1, 2, 3, 4, 5, -1, -2, -3, -4, -5]);
        let s = t_f32("s", &[2, 3], &[1.0, 10.0, 100.0, 0.5, 0.25, 2.0]);
        let z = t_i8("z", &[2, 3], &[0, 1, 2, 0, 0, -5]);
        let y = dequantize(&x, &s, Some(&z), 1, 2).unwrap();
        assert_eq!(
            y,
            vec![1.0, 2.0, 20.0, 30.0, 300.0, -0.5, -1.0, -0.75, -1.0, 0.0]
        );
    }

    #[test]
    fn blocked_dequantize_along_axis_0() {
        let x = t_i8("x", &[4], &[2, 4, 6, 8]);
        let s = t_f32("s", &[2], &[0.5, 2.0]);
        let y = dequantize(&x, &s, None, 0, 2).unwrap();
        assert_eq!(y, vec![1.0, 2.0, 12.0, 16.0]);
    }

    #[test]
    fn mismatched_scale_shape_is_an_error() {
        let x = t_i8("x", &[2, 4], &[0; 8]);
        let s = t_f32("s", &[2, 3], &[1.0; 6]);
        assert!(dequantize(&x, &s, None, 1, 2).is_err());
        let short = t_i8("x", &[2, 4], &[0; 7]);
        assert!(dequantize(&short, &t_f32("s", &[], &[1.0]), None, 1, 0).is_err());
    }

    #[test]
    fn folding_rewrites_graph_and_prunes_inputs() {
        let mut m = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![
                    pb::NodeProto {
                        op_type: "DequantizeLinear".into(),
                        input: vec!["wq".into(), "ws".into()],
                        output: vec!["w".into()],
                        attribute: vec![pb::AttributeProto {
                            name: "block_size".into(),
                            i: 2,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    pb::NodeProto {
                        op_type: "Mul".into(),
                        input: vec!["data".into(), "w".into()],
                        output: vec!["out".into()],
                        ..Default::default()
                    },
                ],
                initializer: vec![t_i8("wq", &[1, 2], &[3, 4]), t_f32("ws", &[1, 1], &[0.5])],
                input: ["data", "wq", "unused_weight"]
                    .iter()
                    .map(|n| pb::ValueInfoProto {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                output: vec![pb::ValueInfoProto {
                    name: "out".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = fold_constant_dequantize(&mut m).unwrap();
        assert_eq!(
            r,
            FoldReport {
                folded_nodes: 1,
                dropped_inputs: 2,
                dropped_initializers: 2
            }
        );
        let g = m.graph.unwrap();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.input.len(), 1);
        assert_eq!(g.input[0].name, "data");
        let w = &g.initializer[0];
        assert_eq!(w.name, "w");
        let vals: Vec<f32> = w
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals, vec![1.5, 2.0]);
    }
}
