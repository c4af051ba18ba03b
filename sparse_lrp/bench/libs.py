"""The other LRP libraries, behind one small interface each: zennit and captum.

Both are optional (the ``bench`` extra installs them); ``zennit()`` / ``captum()`` return
the module or None, and ``why_missing`` says why.
"""

from __future__ import annotations

import importlib
import sys
import types

from torch import Tensor, nn

from .lrp import start_relevance

why_missing: dict[str, str] = {}
_notes: dict[str, str] = {}


def _torchvision_stub() -> None:
    # zennit imports torchvision at import time, only to define canonizers for
    # torchvision's ResNet blocks. On a CPU-only torch, PyPI's torchvision (a CUDA build)
    # cannot load, and pip would replace torch to satisfy it. The benchmark uses none of
    # those canonizers, so stand-in classes let zennit import.
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class Bottleneck(nn.Module):
        pass

    class BasicBlock(nn.Module):
        pass

    resnet.Bottleneck, resnet.BasicBlock = Bottleneck, BasicBlock
    tv.models, models.resnet = models, resnet
    tv.__version__ = "0+stub"
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


def zennit():
    if "zennit" in sys.modules and hasattr(sys.modules["zennit"], "rules"):
        return sys.modules["zennit"]
    stub = False
    try:
        importlib.import_module("torchvision")
    except Exception:  # missing, or installed for another torch build
        _drop_torchvision()
        _torchvision_stub()
        stub = True
        _notes["zennit"] = "zennit imported with a torchvision stand-in (its torchvision canonizers are unused here)"
    try:
        z = importlib.import_module("zennit")
        for sub in ("rules", "composites", "attribution"):
            importlib.import_module(f"zennit.{sub}")
        return z
    except Exception as err:
        why_missing["zennit"] = f"zennit not available ({type(err).__name__}: {err}); install the 'bench' extra"
        return None
    finally:
        if stub:  # zennit holds what it needs; other libraries must not find a fake torchvision
            _drop_torchvision()


def _drop_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def captum():
    try:
        c = importlib.import_module("captum")
        importlib.import_module("captum.attr")
        return c
    except Exception as err:
        why_missing["captum"] = f"captum not available ({type(err).__name__}: {err}); install the 'bench' extra"
        return None


def import_note(name: str) -> str | None:
    return _notes.get(name)


# --------------------------------------------------------------------------------------
# zennit

ZENNIT_RULES = {
    # sparse_lrp rule name -> (zennit rule class name, kwargs from the sparse_lrp rule)
    "Epsilon": ("Epsilon", lambda r: {"epsilon": r.stabilizer}),
    "ZPlus": ("ZPlus", lambda r: {"stabilizer": r.stabilizer}),
    "AlphaBeta": ("AlphaBeta", lambda r: {"alpha": r.alpha, "beta": r.beta, "stabilizer": r.stabilizer}),
    "Gamma": ("Gamma", lambda r: {"gamma": r.gamma, "stabilizer": r.stabilizer}),
    "WSquare": ("WSquare", lambda r: {"stabilizer": r.stabilizer}),
    "Flat": ("Flat", lambda r: {"stabilizer": r.stabilizer}),
}


def _zennit_rule(z, rule):
    name = type(rule).__name__
    if name not in ZENNIT_RULES or getattr(rule, "zero_bias", False):
        raise ValueError(f"no zennit equivalent for {rule!r}")
    cls, kwargs = ZENNIT_RULES[name]
    return getattr(z.rules, cls)(**kwargs(rule))


class ZennitLRP:
    """zennit's ``Gradient`` attributor: ``rule`` on every Linear (``first`` on the first), Pass on ReLUs.

    Pass on the activations is zennit's own convention in its composites (relevance
    crosses an element-wise activation unchanged), and sparse_lrp's. The composite is
    registered once, on a copy of the model (its hooks would otherwise change every
    other method's forward), and the call is the attribution alone, as a user would run
    it in a loop. The start is the explained logit (``start_relevance``).
    """

    def __init__(self, model: nn.Module, rule, first=None) -> None:
        import copy

        z = zennit()
        if z is None:
            raise RuntimeError(why_missing.get("zennit", "zennit missing"))
        zrule, zfirst = _zennit_rule(z, rule), _zennit_rule(z, first) if first is not None else None
        layer_map = [(nn.ReLU, z.rules.Pass()), (nn.Linear, zrule)]
        if zfirst is None:
            composite = z.composites.LayerMapComposite(layer_map=layer_map)
        else:
            composite = z.composites.SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(nn.Linear, zfirst)])
        self.model = copy.deepcopy(model)
        self.attributor = z.attribution.Gradient(model=self.model, composite=composite)
        self.attributor.__enter__()

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        _, rel = self.attributor(x, attr_output=lambda out: start_relevance(out.detach(), target))
        return rel

    def close(self) -> None:
        self.attributor.__exit__(None, None, None)


# --------------------------------------------------------------------------------------
# captum


def captum_rule(rule):
    """captum's equivalent of a sparse_lrp rule and the sparse_lrp rule that matches it exactly.

    Returns ``(captum_rule, matching_sparse_lrp_rule, note)`` or None. captum's
    Alpha1_Beta0 and Gamma use the bias unchanged (sparse_lrp and zennit: its positive
    part, resp. ``b + γ b⁺``), so the comparison zeroes the bias in both; captum's
    GammaRule is the original γ rule (``w + γ w⁺`` for every output) while sparse_lrp's
    and zennit's generalised one uses ``w + γ w⁻`` where ``z < 0``, so the attributions
    differ there; captum's stabiliser is 1e-9 for all rules but Epsilon.
    """
    c = captum()
    if c is None:
        return None
    from captum.attr._utils import lrp_rules as cr

    import sparse_lrp

    name = type(rule).__name__
    if name == "Epsilon":
        return cr.EpsilonRule(epsilon=rule.stabilizer), rule, None
    if name == "ZPlus":
        return (
            cr.Alpha1_Beta0_Rule(set_bias_to_zero=True),
            sparse_lrp.ZPlus(stabilizer=1e-9, zero_bias=True),
            "captum ZPlus (Alpha1_Beta0) keeps the raw bias; compared with the bias zeroed on both sides",
        )
    if name == "Gamma":
        return (
            cr.GammaRule(gamma=rule.gamma, set_bias_to_zero=True),
            sparse_lrp.Gamma(rule.gamma, stabilizer=1e-9, zero_bias=True),
            "captum's GammaRule is the original γ rule (w+γw⁺ for every output; sparse_lrp and zennit use "
            "w+γw⁻ where z<0), so its attribution differs on negative pre-activations; bias zeroed on both sides",
        )
    return None


class CaptumLRP:
    """captum's ``LRP`` with one rule on every Linear (ReLUs pass relevance, captum's default).

    captum removes the rules from the layers after every ``attribute`` call (later calls
    would silently fall back to its Epsilon default), so each call attaches them anew.
    """

    def __init__(self, model: nn.Module, captum_rule_obj) -> None:
        import copy

        from captum.attr import LRP

        self.model = copy.deepcopy(model)
        self.rule_type = type(captum_rule_obj)
        self.rule_state = dict(vars(captum_rule_obj))
        self.linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        self.lrp = LRP(self.model)

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        for m in self.linears:
            r = self.rule_type.__new__(self.rule_type)
            r.__dict__.update(self.rule_state)
            m.rule = r
        return self.lrp.attribute(x, target=target).detach()


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max())
