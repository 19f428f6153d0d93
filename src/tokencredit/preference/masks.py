"""Token masks for SparsePO: a learned sparse mask head (`SparseTokenMasks`, trainable, checkpointed with
`state_dict`) and MaPO's parameter-free activation mask (`ActivationMasks`).

Both are `torch.nn.Module`s called as `masks(hidden, mask) -> [B,T]` (or `(reward_mask, kl_mask)` for independent
heads), 0 outside `mask`, on per-token features of the *frozen reference model*: `hidden [B,T,L,d]` (L layers)
or `[B,T,d]` (one layer), read by `preference 'sparsepo'` from `Pairs.extra["<side>_<input>"]` (`input`: the
module's attribute, `hidden` for every layer, `last_hidden` for the last).

From a config a mask is plain data, `"sparse"`, `"activation"` or a mapping with `kind` and options
(`mask_request`); a trainer builds the module from it with `token_masks` and the reference model's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokencredit.masked import zero_outside
from tokencredit.needs import Request

MASK_KINDS = ("sparse", "activation")
LAYERS = {"all": "hidden", "last": "last_hidden"}  # which reference layers a mask reads → the input that holds them
MASK_REQUEST = "token_masks"  # the name a trainer's module provider is registered under
# options of a mask given as data, with defaults: the code's (`sparse_config.py`: mask dropout and weight decay)
SPARSE_OPTIONS = {"layers": "all", "independent": False, "dropout": 0.01, "weight_decay": 0.01}
ACTIVATION_OPTIONS = {"layers": "all"}


def _layers(hidden: Tensor, mask: Tensor, what: str) -> Tensor:
    """`hidden` as `[B,T,L,d]` (a one-layer `[B,T,d]` gains L = 1), 0 at padding (garbage there, even NaN, must
    not reach the parameters' gradients)."""
    ok = isinstance(hidden, Tensor) and hidden.is_floating_point() and hidden.dim() in (3, 4)
    if not ok or tuple(hidden.shape[:2]) != tuple(mask.shape):
        got = (f"dtype {hidden.dtype}, shape {list(hidden.shape)}" if isinstance(hidden, Tensor)
               else type(hidden).__name__)
        raise ValueError(f"hidden: {what} expected float hidden states [B,T,L,d] or [B,T,d] with [B,T] = "
                         f"{list(mask.shape)}, got {got}")
    if hidden.dim() == 3:
        hidden = hidden.unsqueeze(-2)
    return torch.where(mask[:, :, None, None], hidden, 0.0)


class SparseTokenMasks(nn.Module):
    """SparsePO's learned mask: per layer ℓ a linear head on the layer-normalised reference hidden state, then a
    bias-free mix of the layers,

        m_t = ReLU( Σ_ℓ a_ℓ · drop(ReLU(w_ℓᵀ LN(h^ℓ_t) + b_ℓ)) ),   then dropout,

    exact zeros from the ReLUs (the sparsity), unbounded above, trained jointly with the policy by the SparsePO
    loss (not detached). `independent=True` gives two heads, `(reward_mask, kl_mask)`; otherwise one mask serves
    both terms. Vectorised over layers (`[heads, L, d]` parameters).

    Source: "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks" (Christopoulou et al.,
    Findings of EMNLP 2025); code `huawei-noah/HEBO`, `SparsePO/src/masks/mask_models.py` (`SimpleMaskAllLayers`).
    Choices: one LayerNorm shared by all layers, and the heads' weights and biases drawn as `nn.Linear`'s
    (U(±1/√d)), as the code does; the layer mix starts at `a_ℓ = 1/L` (the code's default `nn.Linear` init can
    start negative, and a negative mix of ReLUs is a mask that is 0 everywhere with no gradient to recover).
    Dropout (default 0.01, the config's) acts in `train()` mode only.
    """

    def __init__(self, hidden_size: int, num_layers: int = 1, *, independent: bool = False, dropout: float = 0.01,
                 eps: float = 1e-5, input: str = "hidden") -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        heads = 2 if independent else 1
        bound = 1.0 / math.sqrt(hidden_size)
        self.independent = independent
        self.input = input
        self.inputs = frozenset({input})
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.weight = nn.Parameter(torch.empty(heads, num_layers, hidden_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, num_layers).uniform_(-bound, bound))
        self.mix = nn.Parameter(torch.full((heads, num_layers), 1.0 / num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = self.norm(_layers(hidden, mask, "SparseTokenMasks").to(self.weight.dtype))
        if x.shape[-2:] != self.weight.shape[1:]:
            raise ValueError(f"hidden: SparseTokenMasks has {self.weight.shape[1]} layers of size "
                             f"{self.weight.shape[2]}, got [L,d] = {list(x.shape[-2:])}")
        per_layer = self.dropout(F.relu(torch.einsum("btld,hld->bthl", x, self.weight) + self.bias))
        masks = self.dropout(F.relu(torch.einsum("bthl,hl->bth", per_layer, self.mix)))
        masks = zero_outside(masks, mask[:, :, None])
        return (masks[..., 0], masks[..., 1]) if self.independent else masks[..., 0]


class ActivationMasks(nn.Module):
    """MaPO's activation mask (no parameters): the mean of each token's reference activations (over layers and
    hidden dimensions), rescaled per response to [0, 1] over its tokens (min → 0, max → 1).

    Source: SparsePO paper's MaPO variant; code `huawei-noah/HEBO`, `SparsePO/src/masks/mask_models.py`
    (`apply_masked_z_norm`). Choices: the code z-normalises before the min–max rescale; min–max of a z-score is
    the min–max of the raw values (an affine map), so it is skipped. A response whose tokens all have the same
    activation (including a one-token response) gets mask 1 (the code would divide 0 by 0). The reference
    activations are constants (no gradient).
    """

    independent = False

    def __init__(self, input: str = "hidden") -> None:
        super().__init__()
        self.input = input
        self.inputs = frozenset({input})

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        activation = _layers(hidden.detach(), mask, "ActivationMasks").float().mean((-2, -1))
        low = torch.where(mask, activation, math.inf).amin(-1, keepdim=True) if mask.shape[1] else activation
        high = torch.where(mask, activation, -math.inf).amax(-1, keepdim=True) if mask.shape[1] else activation
        spread = high - low
        finite = torch.isfinite(spread) & (spread > 0)
        scaled = (activation - torch.where(finite, low, 0.0)) / torch.where(finite, spread, 1.0)
        return zero_outside(torch.where(finite, scaled, 1.0), mask)


def mask_request(spec: object) -> Request:
    """The module request (`Needs.modules`) of a mask given as data: `"sparse"` or `"activation"`, or a mapping
    `{kind: sparse, layers: all|last, independent: bool, dropout: p, weight_decay: w}` (`activation` takes `layers`
    only), options not given at their defaults (`SPARSE_OPTIONS`). A ValueError names `masks` and the option."""
    given = {"kind": spec} if isinstance(spec, str) else spec
    if not isinstance(given, dict):
        raise ValueError(f"masks: expected {' or '.join(map(repr, MASK_KINDS))}, a mapping {{kind: ..., options}} or "
                         f"a mask module, got {spec!r}")
    options = dict(given)
    kind = options.pop("kind", "sparse")
    if kind not in MASK_KINDS:
        raise ValueError(f"masks.kind: expected one of {list(MASK_KINDS)}, got {kind!r}")
    defaults = SPARSE_OPTIONS if kind == "sparse" else ACTIVATION_OPTIONS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"masks: {unknown} are not options of {kind!r} masks (it takes {sorted(defaults)})")
    options = {**defaults, **options}
    if options["layers"] not in LAYERS:
        raise ValueError(f"masks.layers: expected one of {list(LAYERS)}, got {options['layers']!r}")
    if kind == "sparse":
        if not isinstance(options["independent"], bool):
            raise ValueError(f"masks.independent: expected true or false, got {options['independent']!r}")
        for name, ok, text in (("dropout", lambda p: 0 <= p < 1, "a probability in [0, 1)"),
                               ("weight_decay", lambda w: w >= 0, "a number >= 0")):
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
                raise ValueError(f"masks.{name}: expected {text}, got {value!r}")
    return Request(MASK_REQUEST, kind=kind, **options)


def token_masks(kind: str, hidden_size: int, num_layers: int, *, layers: str = "all", independent: bool = False,
                dropout: float = 0.01) -> nn.Module:
    """The mask module of a `mask_request` (its options but `weight_decay`, the optimizer's) for a reference model
    with `num_layers` layers of size `hidden_size`: `SparseTokenMasks` over every layer (`layers="all"`) or the
    last, or `ActivationMasks`."""
    if kind == "activation":
        return ActivationMasks(input=LAYERS[layers])
    return SparseTokenMasks(hidden_size, num_layers if layers == "all" else 1, independent=independent,
                            dropout=dropout, input=LAYERS[layers])
