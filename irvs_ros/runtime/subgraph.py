"""Cut a policy graph down to what some of its outputs need (onnx protobuf only; never torch).

ONNX Runtime runs every node of a graph whatever outputs a call asks for, so an implicit image policy that is run
once per DFO round for "energy" would also re-run its image encoder on a dummy image each time. The runtime
therefore opens one session per group of outputs ("feat"; "energy"; ...) on the subgraph those outputs depend on.
"""

from __future__ import annotations

from collections.abc import Sequence


class SubgraphError(ValueError):
    """The requested outputs are not outputs of the graph, or the bytes are not an ONNX model."""


def prune_to_outputs(model_bytes: bytes, outputs: Sequence[str]) -> tuple[bytes, list[str]]:
    """(serialized model computing only `outputs`, the graph inputs it still needs, in graph order).

    Keeps the nodes `outputs` depend on (walking node inputs back to graph inputs and initializers), the
    initializers and graph inputs those nodes read, and the model's opsets, IR version and metadata.
    """
    model = _parse(model_bytes)
    graph = model.graph
    known = {o.name for o in graph.output}
    missing = [o for o in outputs if o not in known]
    if missing:
        raise SubgraphError(f"graph has no output(s) {missing}; outputs: {sorted(known)}")
    producer = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            producer[name] = index
    keep_nodes: set[int] = set()
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        index = producer.get(name)
        if index is None or index in keep_nodes:
            continue
        keep_nodes.add(index)
        node = graph.node[index]
        stack.extend(i for i in node.input if i)
        # Subgraph attributes (If / Loop bodies) may read outer-scope names.
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                stack.extend(_outer_names(sub))
    nodes = [graph.node[i] for i in sorted(keep_nodes)]
    inits = [t for t in graph.initializer if t.name in needed]
    inputs = [i for i in graph.input if i.name in needed]
    outs = [o for o in graph.output if o.name in outputs]
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend(outs)
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    init_names = {t.name for t in inits}
    return model.SerializeToString(), [i.name for i in inputs if i.name not in init_names]


def expose_concat_inputs(model_bytes: bytes, output: str) -> tuple[bytes, list[str]]:
    """(serialized model with one more output per input of the Concat that produces `output`, their names).

    An autoregressive policy's "energy_ar" (B, N, D) is the Concat of its D models' (B, N, 1) energies; exposing
    them as "energy_ar_0" .. "energy_ar_{D-1}" lets `prune_to_outputs` cut a graph that runs one model alone.
    SubgraphError when `output` is not produced by a Concat.
    """
    import onnx
    from onnx import helper

    model = _parse(model_bytes)
    graph = model.graph
    node = next((n for n in graph.node if output in n.output), None)
    if node is None or node.op_type != "Concat":
        raise SubgraphError(f"output {output!r} is not produced by a Concat node "
                            f"({'no producer' if node is None else node.op_type})")
    elem_type = next((o.type.tensor_type.elem_type for o in graph.output if o.name == output), onnx.TensorProto.FLOAT)
    names = [f"{output}_{i}" for i in range(len(node.input))]
    for source, name in zip(node.input, names, strict=True):
        graph.node.append(helper.make_node("Identity", [source], [name], name=f"expose_{name}"))
        graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return model.SerializeToString(), names


def _parse(model_bytes: bytes):  # -> onnx.ModelProto (onnx is imported lazily)
    import onnx  # a runtime dependency of policy loading only when subgraphs are used

    model = onnx.ModelProto()
    try:
        model.ParseFromString(model_bytes)
    except Exception as e:  # protobuf raises DecodeError, a plain Exception subclass
        raise SubgraphError(f"not an ONNX model: {e}") from e
    return model


def _outer_names(graph) -> list[str]:
    names = []
    for node in graph.node:
        names.extend(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names.extend(_outer_names(sub))
    return names
