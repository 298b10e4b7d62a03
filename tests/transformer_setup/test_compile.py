"""Every compiled training path is one graph: torch.compile(fullgraph=True) traces forward and
backward of plain, selectively and fully checkpointed, every-k checkpointed models and the
chunked loss without a graph break, captures the whole model, and computes what eager does."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.debugging import aot_eager

from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT, LOSS_CHUNK_TOKENS, flash_attn_func

TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
PATHS = {
    "plain": ({}, (2, 32)),
    "selective checkpointing": (dict(gradient_checkpointing=True, checkpoint_selective=True),
                                (2, 32)),
    "full checkpointing": (dict(gradient_checkpointing=True), (2, 32)),
    "every 2nd block": (dict(gradient_checkpointing=True, checkpoint_every=2, n_layer=3), (2, 32)),
    # more targets than LOSS_CHUNK_TOKENS: the loss is computed in checkpointed chunks
    "chunked loss": (dict(block_size=LOSS_CHUNK_TOKENS // 2 + 8), (2, LOSS_CHUNK_TOKENS // 2 + 8)),
}


def compiled_graphs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Loss and gradients through torch.compile(fullgraph=True), and the graphs Dynamo made."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    loss = torch.compile(model, backend=backend, fullgraph=True)(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, graphs


def linear_calls(gm: torch.fx.GraphModule) -> int:
    return sum(node.target in (torch._C._nn.linear, torch.nn.functional.linear)
               for sub in gm.modules() if isinstance(sub, torch.fx.GraphModule)
               for node in sub.graph.nodes if node.op == "call_function")


@pytest.mark.parametrize("path", PATHS)
def test_each_training_path_compiles_to_one_whole_graph(path):
    fields, shape = PATHS[path]
    config = ModelConfig(**{**TINY, **fields})
    torch.manual_seed(0)
    model = GPT(config).train()
    x, y = torch.randint(0, 64, shape), torch.randint(0, 64, shape)
    loss, grads, graphs = compiled_graphs(model, x, y)  # fullgraph: a break would raise
    assert len(graphs) == 1
    # the whole model is in it (checkpointed regions as subgraphs): every block's four
    # projections and the head's matmul
    assert linear_calls(graphs[0]) >= 4 * config.n_layer + 1
    model.zero_grad()
    eager = model(x, y)
    eager.backward()
    torch.testing.assert_close(loss, eager.detach(), rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(flash_attn_func is None or not torch.cuda.is_available(),
                    reason="flash-attn needs its package and a CUDA device")
def test_flash_attn_compiles_into_the_graph():
    config = ModelConfig(**TINY, attention="flash")
    model = GPT(config).cuda().train()
    x = torch.randint(0, 64, (2, 32), device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        _, _, graphs = compiled_graphs(model, x, x)
    assert len(graphs) == 1 and "flash_attn" in str(graphs[0].graph)
