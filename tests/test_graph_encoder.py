"""The explainer's graph level (paper section 3.4): path subgraphs, GNN encoders, MoE adapter, soft prompts."""

import numpy as np
import pytest
import torch

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.graph_encoder import (
    GraphSoftPrompt,
    MoEAdapter,
    PathGraphEncoder,
    build_graph_soft_prompt,
    concat_paths,
    graph_settings,
    place_soft_prompts,
    soft_prompt_tokens,
)
from recbole_mmprefer.explainer.path_graphs import PathSubgraphBuilder, sample_neighbours
from recbole_mmprefer.retrieval.graph import InteractionGraph

# users u0..u3 are nodes 0..3, items i0..i4 nodes 4..8
EDGES = [("u0", "i0"), ("u0", "i1"), ("u0", "i2"), ("u0", "i3"), ("u0", "i4"), ("u1", "i0"), ("u1", "i1"),
         ("u1", "i3"), ("u2", "i1"), ("u2", "i2"), ("u2", "i4"), ("u3", "i3"), ("u3", "i4")]
PATH = [0, 5, 1, 4]  # u0 -> i1 -> u1 -> i0 explains (u0, i0); the direct edge u0-i0 is in the graph
OTHER_PATH = [2, 6, 0, 7]  # u2 -> i2 -> u0 -> i3
DIM = 4


@pytest.fixture()
def graph():
    users, items = zip(*EDGES)
    return InteractionGraph.from_edges(users, items, [f"u{n}" for n in range(4)], [f"i{n}" for n in range(5)])


@pytest.fixture()
def vectors():
    user_vectors = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM) + 1
    user_vectors[3] = 0  # u3 has no vector
    item_vectors = -np.arange(5 * DIM, dtype=np.float32).reshape(5, DIM) - 100
    return user_vectors, item_vectors


def builder(graph, vectors, neighbours=10, seed=7):
    return PathSubgraphBuilder(graph, *vectors, neighbours=neighbours, seed=seed)


def undirected(data):
    ids = data.node_id[data.edge_index]
    return {tuple(sorted(pair)) for pair in ids.t().tolist()}


def test_path_subgraph_nodes_edges_and_direct_edge_left_out(graph, vectors):
    data = builder(graph, vectors).path(PATH)
    assert data.node_id.tolist() == PATH + [2, 6, 7, 8]  # path first in path order, then neighbours by id
    assert data.path_mask.tolist() == [True] * 4 + [False] * 4
    assert undirected(data) == {(0, 5), (0, 6), (0, 7), (0, 8), (1, 4), (1, 5), (1, 7), (2, 5), (2, 6), (2, 8)}
    assert data.edge_index.shape[1] == 2 * 10  # both directions
    assert {tuple(edge) for edge in data.edge_index.t().tolist()} == {
        (target, source) for source, target in data.edge_index.t().tolist()}


def test_neighbour_cap_is_respected_and_sampled(graph, vectors):
    data = builder(graph, vectors, neighbours=1).path(PATH)
    assert len(data.node_id) <= len(PATH) * 2
    chosen = sample_neighbours(graph, 0, 1, seed=7, exclude=PATH)
    assert len(chosen) == 1 and chosen[0] in (6, 7, 8) and chosen[0] in data.node_id.tolist()
    assert builder(graph, vectors, neighbours=0).path(PATH).node_id.tolist() == PATH
    picks = {int(sample_neighbours(graph, 0, 1, seed=seed, exclude=PATH)[0]) for seed in range(30)}
    assert len(picks) > 1  # a seeded sample, not always the first neighbour


def test_subgraphs_are_deterministic_and_independent_of_order(graph, vectors):
    first = builder(graph, vectors, neighbours=1)
    one, two = first.path(PATH), first.path(OTHER_PATH)
    second = builder(graph, vectors, neighbours=1)
    two_again, one_again = second.pair([OTHER_PATH, PATH])
    for left, right in ((one, one_again), (two, two_again)):
        for key in ("x", "edge_index", "node_type", "path_mask", "node_id"):
            assert torch.equal(left[key], right[key]), key


def test_features_follow_user_and_item_rows(graph, vectors):
    user_vectors, item_vectors = vectors
    data = builder(graph, vectors).path([3, 7, 1])  # u3 (no vector) -> i3 -> u1
    for row, node in enumerate(data.node_id.tolist()):
        expected = user_vectors[node] if node < 4 else item_vectors[node - 4]
        assert torch.equal(data.x[row], torch.from_numpy(expected)), node
        assert data.node_type[row] == (0 if node < 4 else 1)
    assert torch.all(data.x[0] == 0)
    with pytest.raises(InputError, match="do not fit"):
        PathSubgraphBuilder(graph, user_vectors[:3], item_vectors)


def test_pair_takes_paths_of_a_record(graph, vectors):
    record = {"user_id": "u0", "item_id": "i0", "status": "ok",
              "paths": [{"nodes": PATH}, {"nodes": [0, 6, 2, 5, 1, 4]}]}
    graphs = builder(graph, vectors).pair(record, k=1)
    assert len(graphs) == 1 and graphs[0].node_id[:4].tolist() == PATH
    assert builder(graph, vectors).pair({"status": "no_path", "paths": []}, k=3) == []


@pytest.mark.parametrize("gnn", ["gat", "gcn", "transformer"])
@pytest.mark.parametrize("pool", ["path", "all"])
def test_each_gnn_gives_one_vector_per_path(graph, vectors, gnn, pool):
    from torch_geometric.data import Batch

    make = builder(graph, vectors, neighbours=2)
    batch = Batch.from_data_list([make.path(PATH), make.path(OTHER_PATH), make.path([3])])
    torch.manual_seed(0)
    encoder = PathGraphEncoder(DIM, 8, 5, gnn=gnn, layers=2, heads=2, pool=pool)
    assert encoder(batch).shape == (3, 5)


def test_concatenation_pads_missing_paths():
    no_path = torch.full((2,), -1.0)
    vectors = torch.arange(8, dtype=torch.float).reshape(4, 2)
    out = concat_paths(vectors, [1, 0, 3], 3, no_path)
    assert out.tolist() == [[0, 1, -1, -1, -1, -1], [-1] * 6, [2, 3, 4, 5, 6, 7]]
    with pytest.raises(InputError):
        concat_paths(vectors, [4], 3, no_path)


def test_soft_prompt_keeps_first_k_paths_and_pads_with_learned_vector(graph, vectors):
    make = builder(graph, vectors)
    torch.manual_seed(0)
    module = GraphSoftPrompt(DIM, 16, paths=2, soft_tokens=3, hidden_dim=8).eval()
    with torch.no_grad():
        module.no_path.fill_(0.5)
        full = module.pair_vectors([[make.path(PATH), make.path(OTHER_PATH), make.path([3])], [make.path(PATH)], []])
        alone = module.pair_vectors([[make.path(PATH), make.path(OTHER_PATH)]])
    assert full.shape == (3, 16)
    assert torch.allclose(full[0], alone[0], atol=1e-6)  # the third path is dropped
    assert torch.allclose(full[1, :8], full[0, :8], atol=1e-6) and torch.all(full[1, 8:] == 0.5)
    assert torch.all(full[2] == 0.5)
    assert module(([make.path(PATH)], [])).shape == (2, 3, 16)


def test_moe_adapter_shape_and_gate():
    torch.manual_seed(0)
    adapter = MoEAdapter(12, 16, 3, experts=4, dropout=0.1)
    inputs = torch.randn(5, 12)
    assert adapter(inputs).shape == (5, 3, 16)
    weights = adapter.gate_weights(inputs)
    assert weights.shape == (5, 4) and torch.allclose(weights.sum(-1), torch.ones(5))
    adapter.eval()
    mixed = sum(weights[:, [e]] * expert(inputs) for e, expert in enumerate(adapter.experts))
    assert torch.allclose(adapter(inputs), mixed.view(5, 3, 16), atol=1e-6)


def test_place_soft_prompts_writes_exactly_at_positions():
    inputs = torch.randn(2, 6, 4, requires_grad=True)
    soft = torch.randn(2, 2, 4, requires_grad=True)
    positions = torch.tensor([[1, 4], [5, 0]])
    out = place_soft_prompts(inputs, soft, positions)
    for row in range(2):
        for slot, position in enumerate(positions[row].tolist()):
            assert torch.equal(out[row, position], soft[row, slot])
        others = [n for n in range(6) if n not in positions[row].tolist()]
        assert torch.equal(out[row, others], inputs[row, others])
    assert not torch.equal(out, inputs)  # out of place: inputs untouched
    out.sum().backward()
    assert torch.all(soft.grad == 1)
    assert inputs.grad[0, 1].abs().sum() == 0 and torch.all(inputs.grad[0, 0] == 1)
    with pytest.raises(InputError, match="lie in"):
        place_soft_prompts(inputs, soft, torch.tensor([[1, 6], [0, 2]]))
    with pytest.raises(InputError, match="repeat"):
        place_soft_prompts(inputs, soft, torch.tensor([[1, 1], [0, 2]]))


@pytest.mark.parametrize("gnn", ["gat", "gcn", "transformer"])
def test_gradients_reach_gnn_gate_and_experts_through_a_llama(graph, vectors, gnn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=25, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    llm.requires_grad_(False)
    module = GraphSoftPrompt.from_config({"explainer_paths": 2, "explainer_soft_tokens": 2, "explainer_gnn": gnn,
                                          "explainer_gnn_hidden": 8}, DIM, 16)
    make = builder(graph, vectors, neighbours=2)
    soft = module([[make.path(PATH), make.path(OTHER_PATH)], [make.path([3, 7, 1])]])
    input_ids = torch.randint(4, 25, (2, 7))
    embeds = place_soft_prompts(llm.get_input_embeddings()(input_ids), soft, torch.tensor([[1, 2], [1, 2]]))
    llm(inputs_embeds=embeds, labels=input_ids).loss.backward()

    def reached(parameters):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)

    assert reached(module.encoder.input.parameters())
    for conv in module.encoder.convs:
        assert reached(conv.parameters())
    assert reached(module.adapter.gate.parameters())
    assert all(reached(expert.parameters()) for expert in module.adapter.experts)
    assert module.no_path.grad.abs().sum() > 0  # the second pair has one path of two


def test_state_dict_holds_only_the_graph_level():
    module = GraphSoftPrompt(DIM, 16)
    assert {key.split(".")[0] for key in module.state_dict()} == {"encoder", "adapter", "no_path"}


def test_config_defaults_and_ablation():
    settings = graph_settings({})
    assert (settings.paths, settings.soft_prompt_tokens, settings.gnn) == (3, 3, "gat")
    module = build_graph_soft_prompt({}, DIM, 16)
    assert module.paths == 3 and module.adapter.soft_tokens == 3
    assert soft_prompt_tokens({}) == 3
    assert soft_prompt_tokens({"explainer_paths": 2}) == 2  # soft tokens ~ = one per path
    assert soft_prompt_tokens({"explainer_paths": 2, "explainer_soft_tokens": 4}) == 4
    for off in ({"explainer_graph_level": False}, {"explainer_soft_tokens": 0}, {"explainer_paths": 0}):
        assert build_graph_soft_prompt(off, DIM, 16) is None
        assert soft_prompt_tokens(off) == 0
    with pytest.raises(InputError, match="explainer_gnn"):
        graph_settings({"explainer_gnn": "gin"})
    with pytest.raises(InputError, match="explainer_pool"):
        graph_settings({"explainer_pool": "max"})


def test_a_neutral_start_gives_the_neutral_token_for_every_pair_and_still_learns(graph, vectors):
    module = GraphSoftPrompt.from_config({"explainer_paths": 2, "explainer_soft_tokens": 2, "explainer_gnn_hidden": 8,
                                          "explainer_soft_prompt_start": "neutral"}, DIM, 16)
    neutral = torch.linspace(-1, 1, 16)
    module.start_at(neutral)
    make = builder(graph, vectors, neighbours=2)
    soft = module([[make.path(PATH), make.path(OTHER_PATH)], [make.path([3, 7, 1])], []])
    assert torch.equal(soft, neutral.expand(3, 2, 16))  # no noise from the untrained GNN and adapter
    (soft * torch.randn_like(soft)).sum().backward()
    assert all(expert.weight.grad.abs().sum() > 0 for expert in module.adapter.experts)
    assert module.neutral.grad.abs().sum() > 0 and "neutral" in module.state_dict()
    random_start = GraphSoftPrompt.from_config({"explainer_paths": 2, "explainer_gnn_hidden": 8}, DIM, 16)
    assert random_start.neutral is None
    assert not torch.allclose(*random_start([[make.path(PATH)], [make.path([3, 7, 1])]]))
