"""The implementation side of a method: the :class:`Method` base class, and helpers for methods that wrap layers.

A method is a declaration (``declarations/<method>.py``: name, default learning rate, options, adapter file
format; plain data, see :mod:`t5peft.methods.declaration`) and a :class:`Method` subclass that implements it
(``<method>.py``), listed once in ``registry.METHODS``. Method modules import this module, ``declaration`` and
their declaration (and, where one builds on another, that one) and nothing above them.

Applying a method inserts its modules into the model in place (:meth:`Method.inject`); the parameters it adds
are found by comparing parameter names before and after, so freezing, counting, optimizer groups, checkpoints and
saving need no per-method code. A method overrides only what differs, in three concerns:

* structure: ``inject``, ``trainable_names`` (full fine-tuning trains what it did not add), and two facts the
  contract suite (``tests/test_method_contract.py``) holds it to, ``identity_at_init`` and
  ``closed_form_trainable``;
* training: optimizer groups, an extra loss term, a hook before training and one after each optimizer step,
  state kept outside parameters (for exact resume), facts for the results file;
* merging: ``merge`` folds what was trained into the base weights and returns a plain T5, or, for a method whose
  update is not a change of weights (a prompt, an adapter module), ``cannot_merge`` says why and ``merge`` refuses.

What a saved adapter holds is the method's to say where it differs from its trainable parameters
(``export_state`` / ``import_state``: a folded reparameterisation, VeRA's shared projections) or from its options
(``saved_options``: AdaLoRA's rank pattern); how that is laid out in the files is its declaration's
:class:`~t5peft.methods.declaration.AdapterFormat`. A method built to load a file (``from_file``) builds the form
the file holds (P-tuning: the table, not its encoder) and skips initialisation the file overwrites (a prompt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..model.storage import Linear
from .declaration import MethodConfig, MethodConfigError, MethodDeclaration

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration


class Method:
    """One fine-tuning method's implementation. Subclasses set ``declaration``, ``identity_at_init`` and
    ``cannot_merge`` and implement :meth:`inject` and :meth:`closed_form_trainable`."""

    declaration: ClassVar[MethodDeclaration]
    # copies of the declaration's, for code that holds the class or an instance (set by __init_subclass__)
    name: ClassVar[str]
    default_lr: ClassVar[float]
    config_class: ClassVar[type[MethodConfig]]
    # True where an untrained method (initialisation options at their defaults) leaves the model's function
    # exactly unchanged; declared by every method, checked by tests/test_method_contract.py
    identity_at_init: ClassVar[bool]
    # why the method's update cannot be folded into the base weights (``merge`` refuses with it), or None where
    # ``merge`` folds it; declared by every method, checked by tests/test_method_contract.py
    cannot_merge: ClassVar[str | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declaration = cls.__dict__.get("declaration")
        if declaration is not None:
            cls.name, cls.default_lr = declaration.name, declaration.default_lr
            cls.config_class = declaration.config_class

    def __init__(self, config: MethodConfig, *, from_file: bool = False) -> None:
        """``from_file``: the weights will be loaded from a saved adapter (``methods.files.load_adapter``)."""
        self.config = config
        self.from_file = from_file

    # --- structure ------------------------------------------------------------------------------
    def inject(self, model: T5ForConditionalGeneration) -> None:
        """Insert this method's modules into ``model`` (in place)."""
        raise NotImplementedError

    def trainable_names(self, model: T5ForConditionalGeneration, added: list[str]) -> list[str]:
        """Parameters to train; by default exactly those the method added."""
        return added

    def closed_form_trainable(self, config: T5Config) -> int:
        """The number of parameters this method trains on a T5 of ``config``, by the formula its docstring
        states (computed from the configs alone; the contract suite checks it against the applied method)."""
        raise NotImplementedError(f"method {self.name!r} states no closed-form parameter count")

    # --- training -------------------------------------------------------------------------------
    def param_groups(self, model: T5ForConditionalGeneration, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups; one group by default."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def on_train_begin(self, model: T5ForConditionalGeneration, total_steps: int) -> None:
        """Called once before training with the number of optimizer steps planned (e.g. AdaLoRA's schedule)."""

    def extra_loss(self, model: T5ForConditionalGeneration) -> Tensor | None:
        """A term added to the training loss (e.g. AdaLoRA's orthogonality penalty)."""
        return None

    def after_optimizer_step(self, model: T5ForConditionalGeneration, step: int, total_steps: int) -> None:
        """Called after each optimizer step (e.g. AdaLoRA's rank allocation)."""

    def training_state(self) -> dict[str, Tensor]:
        """Tensors the method keeps outside parameters (e.g. importance averages), for exact resume."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`training_state` returned."""

    def report(self, model: T5ForConditionalGeneration) -> dict[str, Any]:
        """Extra facts for results files (e.g. final ranks)."""
        return {}

    # --- merging --------------------------------------------------------------------------------
    def merge(self, model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
        """Fold what the method trained into the base weights and detach the method (in place, also returned): a
        plain T5 with the same function, which ``save_pretrained`` writes as a normal checkpoint."""
        raise MethodConfigError(f"method {self.name!r} cannot be merged into the base weights: {self.cannot_merge}")

    # --- what a saved adapter holds -------------------------------------------------------------
    def export_state(self, model: T5ForConditionalGeneration, names: list[str]) -> dict[str, Tensor]:
        """The tensors to save, by model key (subclasses fold reparameterisations here)."""
        params = dict(model.named_parameters())
        return {name: params[name].detach() for name in names}

    def import_state(self, model: T5ForConditionalGeneration, state: dict[str, Tensor], source: str) -> None:
        """Copy saved tensors (by model key) into the injected modules; shapes checked by the caller."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, tensor in state.items():
                params[key].copy_(tensor)

    def saved_options(self) -> dict[str, Any]:
        """The options as the adapter file records them (by default the config's)."""
        return self.config.to_dict()


# --------------------------------------------------------------------------------------------------
# Helpers shared by methods that wrap linear layers


def resolve_targets(config: T5Config, targets: list[str]) -> list[str]:
    """Target leaf names as this T5 names its layers. A gated-FFN T5 (v1.1, flan-t5) has two input projections,
    ``wi_0`` and ``wi_1``, where a plain T5 has one ``wi``: there ``wi`` stands for both (sorted, as options are)."""
    if "wi" in targets and config.is_gated_act:
        return sorted((set(targets) - {"wi"}) | {"wi_0", "wi_1"})
    return targets


def find_linear_targets(model: T5ForConditionalGeneration, targets: list[str]) -> list[str]:
    """Names of ``nn.Linear`` modules whose last name component is in ``targets`` (PEFT's matching), ``wi`` standing
    for both gated input projections (:func:`resolve_targets`)."""
    targets = resolve_targets(model.config, targets)
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear):
            found.append(name)
    if not found:
        raise MethodConfigError(f"no linear layer matches target_modules={targets}")
    missing = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n in found})
    if missing:
        raise MethodConfigError(f"target_modules {missing} match no linear layer of this model")
    return found


def t5_linear_shapes(config: T5Config) -> dict[str, tuple[int, int, int]]:
    """Every linear layer of a T5 by leaf name: ``(how many, in_features, out_features)``, from the config alone
    (closed-form parameter counts of methods that wrap linear layers)."""
    attentions = config.num_layers + 2 * config.num_decoder_layers  # encoder self, decoder self and cross
    ffns = config.num_layers + config.num_decoder_layers
    d, inner = config.d_model, config.inner_dim
    shapes = {
        "q": (attentions, d, inner),
        "k": (attentions, d, inner),
        "v": (attentions, d, inner),
        "o": (attentions, inner, d),
        "wo": (ffns, config.d_ff, d),
        "lm_head": (1, d, config.vocab_size),
    }
    if config.is_gated_act:
        shapes.update(wi_0=(ffns, d, config.d_ff), wi_1=(ffns, d, config.d_ff))
    else:
        shapes["wi"] = (ffns, d, config.d_ff)
    return shapes


def linear_targets(config: T5Config, targets: list[str]) -> dict[str, tuple[int, int, int]]:
    """``leaf name -> (how many, in, out)`` of the layers :func:`find_linear_targets` matches for ``targets``."""
    shapes = t5_linear_shapes(config)
    targets = resolve_targets(config, targets)
    missing = sorted(set(targets) - set(shapes))
    if missing:
        raise MethodConfigError(f"target_modules {missing} match no linear layer of this model")
    return {name: shapes[name] for name in targets}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


class AdditiveLinear(nn.Module):
    """A wrapped linear layer whose method adds ``delta_weight()`` to the base weight: merging folds that update into
    ``weight`` and unmerging takes it out again (LoRA, VeRA, AdaLoRA). Subclasses set ``merged`` and define
    ``delta_weight``, and their forward returns the base layer's output alone while ``merged``."""

    merged: bool

    def delta_weight(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False


def merge_wrapped_linears(model: T5ForConditionalGeneration, wrapper: type[nn.Module]) -> T5ForConditionalGeneration:
    """Fold every ``wrapper`` layer (one with ``merge()``, ``weight``, ``in/out_features``) into its base weight,
    put plain ``nn.Linear`` layers back and detach the method: the ``merge`` of a method that wraps linear layers."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, wrapper)]
    if not wrapped:  # a programming error: the method's merge names a layer class its inject does not insert
        raise RuntimeError(f"nothing to merge: the model has no {wrapper.__name__} layers")
    for name, module in wrapped:
        module.merge()
        plain = Linear(module.in_features, module.out_features, bias=False, device="meta")
        plain.weight = module.weight
        replace_module(model, name, plain)
    return detach_method(model)


def detach_method(model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """After a merge: no method any more, every weight a plain trainable parameter of a plain T5."""
    model.peft = None
    for param in model.parameters():
        param.requires_grad_(True)
    return model
