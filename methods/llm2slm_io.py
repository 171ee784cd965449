"""What LLM-to-SLM reads from the LLM and how the SLM learns its answers (`methods.llm2slm`): the LLM's features
of a prompt at a chosen layer (`--llm-layer`; an encoder-decoder LLM's encoder), and the SLM's summed answer loss
after the bridged prompt, for a decoder-only SLM (the prompt embeddings, then the answer) and for an
encoder-decoder one (the prompt embeddings are its encoder's input, its decoder reads the answer)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.errors import BenchError


def llm_layers(model: Any) -> int:
    """How many layers the LLM's encoder (encoder-decoder) or decoder (decoder-only) has."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "num_layers", None) or config.num_hidden_layers)


def check_layer(layer: int, model: Any) -> None:
    """Refuse an --llm-layer the LLM does not have (-1: the last, after the final norm; K: block K's output)."""
    count = llm_layers(model)
    if layer != -1 and not 1 <= layer <= count:
        raise BenchError(f"--llm-layer must be -1 (the last) or 1..{count} for this LLM (got {layer})")


@torch.no_grad()
def llm_features(model: Any, ids: torch.Tensor, mask: torch.Tensor | None = None, layer: int = -1) -> torch.Tensor:
    """The LLM's representation of prompt ids (batch, length, hidden): for an encoder-decoder model its encoder's,
    for a decoder-only one its base model's. Layer -1 is the last hidden state (after the final norm); layer K is
    the output of block K (transformers' hidden_states[K]; 0 would be the embeddings; the last one is after the final
    norm, so K = the layer count is the same as -1)."""
    if model.config.is_encoder_decoder:
        encoder = model.get_encoder()
        if layer == -1:
            return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    if layer == -1:
        return model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    return out.hidden_states[layer]


def answer_loss(model: Any, prompts: list[torch.Tensor], answers: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of each answer's tokens after its prompt embeddings (a right-padded batch, padding
    masked), and the number of answer tokens. Logits are computed at answer positions only."""
    embed = model.get_input_embeddings()
    device = prompts[0].device
    inputs, labels = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = torch.tensor(answer, device=device)
        inputs.append(torch.cat([prompt, embed(ids[:-1])]))
        labels.append(torch.cat([torch.full((len(prompt) - 1,), -100, device=device), ids]))
    length = max(len(x) for x in inputs)
    batch = torch.stack([F.pad(x, (0, 0, 0, length - len(x))) for x in inputs])
    mask = torch.stack([torch.arange(length, device=device) < len(x) for x in inputs]).long()
    target = torch.stack([F.pad(y, (0, length - len(y)), value=-100) for y in labels])
    keep = target != -100
    logits = model(inputs_embeds=batch, attention_mask=mask, logits_to_keep=keep).logits  # (answer tokens, vocab)
    return F.cross_entropy(logits.float(), target[keep], reduction="sum"), int(keep.sum())


def seq2seq_loss(model: Any, prompts: list[torch.Tensor], answers: list[list[int]]) -> tuple[torch.Tensor, int]:
    """`answer_loss` for an encoder-decoder SLM: the prompt embeddings are its encoder's input (a right-padded
    batch, padding masked), its decoder reads each answer after the start token."""
    device = prompts[0].device
    length, width = max(len(p) for p in prompts), max(len(a) for a in answers)
    batch = torch.stack([F.pad(p, (0, 0, 0, length - len(p))) for p in prompts])
    mask = torch.stack([torch.arange(length, device=device) < len(p) for p in prompts]).long()
    labels = torch.tensor([a + [-100] * (width - len(a)) for a in answers], device=device)
    config = model.config
    start = torch.full((len(answers), 1), config.decoder_start_token_id, device=device)
    decoder_ids = torch.cat([start, labels[:, :-1]], 1)
    decoder_ids = decoder_ids.masked_fill(decoder_ids == -100, config.pad_token_id or 0)  # padding: not scored
    logits = model(inputs_embeds=batch, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    keep = labels != -100
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), int(keep.sum())
