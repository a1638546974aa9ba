"""Carrying out a plan: re-initialize parameters by rules, deterministically, and save.

Determinism: each parameter gets its own ``torch.Generator`` seeded from the run's seed and
the parameter's name (:func:`derive_seed`), so the same seed and rules give the same values,
and adding a rule for one layer does not change the values drawn for another. Values are
drawn in float32 (float64 for float64 tensors) on the CPU and copied into the tensor, which
keeps its dtype and device. Parameters no rule changes, and every buffer, are not touched.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from initscope import __version__
from initscope.errors import InitScopeError, TargetError
from initscope.io.checkpoints import Checkpoint
from initscope.io.models import open_target
from initscope.io.output import OutputError, check_writable, refuse_input_files, same_file
from initscope.io.saving import Provenance, output_format, save_state_dict
from initscope.io.targets import ModelSpec, TargetOptions
from initscope.knowledge.distributions import Distribution, Family
from initscope.knowledge.tracing import DefaultInit
from initscope.parallel.workers import ProgressFn, ticker
from initscope.rules.language import (
    Problem,
    RulesError,
    RuleSet,
    Unmatched,
    init_functions,
    load_rules,
)
from initscope.rules.plan import (
    Action,
    ParamSite,
    Plan,
    PlanEntry,
    make_plan,
    sites_from_checkpoint,
    sites_from_model,
)

__all__ = [
    "ApplyOptions",
    "ApplyResult",
    "apply_plan",
    "apply_rules",
    "apply_target",
    "derive_seed",
    "plan_target",
    "strict_problems",
]

RulesSource = RuleSet | str | os.PathLike[str] | Mapping[str, Any]


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one parameter from the run's seed and the parameter's name."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, name))


def _as_rules(rules: RulesSource) -> RuleSet:
    return rules if isinstance(rules, RuleSet) else load_rules(rules)  # type: ignore[arg-type]


def strict_problems(plan: Plan) -> list[Problem]:
    """What ``--strict`` refuses: rules that matched nothing, parameters no rule covered."""
    out = [
        Problem(
            r.where,
            f"rules[{r.index}]",
            "matched no parameter (--strict)",
            "fix its type/name/param, or remove the rule",
        )
        for r in plan.unused
    ]
    missed = plan.unmatched
    if missed:
        names = ", ".join(e.site.name for e in missed[:5])
        more = f" and {len(missed) - 5} more" if len(missed) > 5 else ""
        out.append(
            Problem(
                plan.rules.source,
                "",
                f"no rule covers {len(missed)} parameter(s): {names}{more} (--strict)",
                "add rules for them; `init: keep` leaves a parameter as it is and counts as "
                "covered",
            )
        )
    return out


def _reset_method(module: torch.nn.Module) -> Callable[[], None] | None:
    # nn.MultiheadAttention and nn.Transformer name theirs _reset_parameters.
    for name in ("reset_parameters", "_reset_parameters"):
        method = getattr(module, name, None)
        if callable(method):
            return method  # type: ignore[no-any-return]
    return None


def _resettable(model: torch.nn.Module) -> dict[str, bool]:
    return {path: _reset_method(m) is not None for path, m in model.named_modules()}


def apply_rules(
    model: torch.nn.Module,
    rules: RulesSource,
    *,
    seed: int | None = None,
    unmatched: Unmatched | None = None,
    strict: bool = False,
    defaults: Mapping[str, DefaultInit] | None = None,
    dry_run: bool = False,
) -> Plan:
    """Re-initialize ``model``'s parameters in place by ``rules`` (a path, a preset name, a
    mapping or a :class:`RuleSet`) and return the plan that was carried out.

    Raises :class:`~initscope.rules.language.RulesError` (with every problem) before changing
    anything.
    """
    rs = _as_rules(rules)
    plan = make_plan(
        sites_from_model(model),
        rs,
        seed=seed,
        unmatched=unmatched,
        defaults=defaults,
        resettable=_resettable(model),
    )
    if strict and (problems := strict_problems(plan)):
        raise RulesError(problems)
    if not dry_run:
        apply_plan(plan, dict(model.named_parameters(remove_duplicate=False)), model)
    return plan


def apply_plan(
    plan: Plan,
    tensors: Mapping[str, torch.Tensor],
    model: torch.nn.Module | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """Write the plan's values into ``tensors`` (by parameter name) in place.
    ``progress`` hears the bytes and parameters written after each parameter."""
    changing = plan.changed
    tick = ticker(
        progress, [tensors[e.site.name].numel() * tensors[e.site.name].itemsize for e in changing]
    )
    for i, entry in enumerate(changing):
        _apply_entry(entry, tensors[entry.site.name], plan.seed, model)
        tick(i)


def _apply_entry(
    entry: PlanEntry, tensor: torch.Tensor, seed: int, model: torch.nn.Module | None
) -> None:
    """One parameter's new values, written into ``tensor``."""
    if entry.action is Action.INIT:
        _init(entry, tensor, seed)
    elif entry.default_via == "reset_parameters":
        assert model is not None
        _reset(model, entry.site, seed)
    else:
        dist = entry.distribution
        assert dist is not None
        g = _generator(seed, entry.site.name)
        _fill(tensor, lambda w: _draw(dist, w, g))


def _fill(tensor: torch.Tensor, draw: Callable[[torch.Tensor], Any]) -> None:
    # Draw in float32 (float64 stays float64) on the CPU, then cast into the tensor: low
    # precision dtypes get the float32 values rounded, as the issue asks, and devices other
    # than the CPU see the same values as a CPU run.
    work_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    work = torch.empty(tuple(tensor.shape), dtype=work_dtype)
    with torch.no_grad():
        draw(work)
        tensor.copy_(work)


def _init(entry: PlanEntry, tensor: torch.Tensor, seed: int) -> None:
    assert entry.init is not None
    fn = init_functions()[entry.init]
    kwargs: dict[str, Any] = dict(entry.args)
    if fn.takes_generator:
        kwargs["generator"] = _generator(seed, entry.site.name)
    # Some init functions also draw from the global RNG (sparse_ picks its zeros with
    # torch.randperm): seed it per parameter too, and leave the caller's RNG as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, entry.site.name))
        _fill(tensor, lambda w: fn(w, **kwargs))


def _draw(dist: Distribution, w: torch.Tensor, g: torch.Generator) -> None:
    init = torch.nn.init
    if dist.family is Family.UNIFORM:
        assert dist.low is not None and dist.high is not None
        init.uniform_(w, dist.low, dist.high, generator=g)
    elif dist.family is Family.NORMAL:
        assert dist.loc is not None and dist.scale is not None
        init.normal_(w, dist.loc, dist.scale, generator=g)
    elif dist.family is Family.TRUNC_NORMAL:
        assert dist.loc is not None and dist.scale is not None
        assert dist.low is not None and dist.high is not None
        init.trunc_normal_(w, dist.loc, dist.scale, dist.low, dist.high, generator=g)
    else:
        assert dist.family is Family.CONSTANT and dist.value is not None
        init.constant_(w, dist.value)


def _reset(model: torch.nn.Module, site: ParamSite, seed: int) -> None:
    """Re-run the module's ``reset_parameters()`` for one parameter, on a float32 (float64
    stays float64) CPU copy of the module, and copy that one parameter back: the module's
    other parameters and its buffers (BatchNorm's running stats) are never touched, and low
    precision parameters get the float32 draw rounded, as every other init here."""
    module = model.get_submodule(site.module)
    target = getattr(module, site.param)
    work_dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(derive_seed(seed, site.name))
        scratch = copy.deepcopy(module).to(device="cpu", dtype=work_dtype)
        reset = _reset_method(scratch)
        assert reset is not None
        reset()
        target.copy_(getattr(scratch, site.param))


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyOptions:
    """How ``apply`` runs: output path, seed and unmatched overrides, and the safety flags."""

    output: Path | None = None
    seed: int | None = None
    unmatched: Unmatched | None = None
    strict: bool = False
    dry_run: bool = False
    force: bool = False
    in_place: bool = False


@dataclass(frozen=True)
class ApplyResult:
    """The plan and where it was written (None on a dry run)."""

    target: str
    plan: Plan
    output: Path | None
    rules_file: str


def _check_output(input_path: Path | None, options: ApplyOptions) -> Path | None:
    if options.dry_run:
        return None
    output = options.output
    if output is None and options.in_place and input_path is not None:
        output = input_path
    if options.in_place and output is not None and output.is_symlink():
        # Replace the file the link points to (a Hugging Face cache entry is a link), not
        # the link itself.
        output = Path(os.path.realpath(output))
    if output is None:
        raise OutputError(
            "apply needs an output file",
            "add -o out.safetensors (or --dry-run to see the plan, or --in-place to "
            "rewrite the input checkpoint)",
        )
    if options.output is None and options.in_place:
        try:
            output_format(output)
        except OutputError:
            raise OutputError(
                f"--in-place cannot rewrite {output}: apply writes .safetensors, .pt or .pth",
                "give an output with -o out.safetensors",
            ) from None
    else:
        output_format(output)
    check_writable(output)
    if input_path is not None and same_file(output, input_path):
        if not options.in_place:
            raise OutputError(
                f"{output} is the input checkpoint; apply does not overwrite its input",
                "write to another file, or pass --in-place to replace the input",
            )
    elif output.exists() and not options.force:
        raise OutputError(f"{output} already exists", "pass --force to replace it")
    return output


def _spec_record(spec: ModelSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {
        "ref": spec.ref,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "input_shape": list(spec.example_input_shape) if spec.example_input_shape else None,
        "base_dir": str(spec.base_dir) if spec.base_dir else None,
    }


def _load_into(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    from initscope.measure.report import fitted_keys

    state = model.state_dict(keep_vars=True)
    keys = fitted_keys(model, ckpt)
    with torch.no_grad():
        for name, t in state.items():
            if name in keys:
                # .data, not copy_: the checkpoint's dtype (bf16) is kept, not the model's.
                t.data = ckpt.load(keys[name]).to(t.device).clone()


def plan_target(
    target: str,
    rules: RulesSource,
    how: TargetOptions = TargetOptions(),
    options: ApplyOptions = ApplyOptions(),
) -> ApplyResult:
    """Validate ``rules`` against TARGET and return the plan, changing nothing."""
    from dataclasses import replace

    return apply_target(target, rules, how, replace(options, dry_run=True))


def apply_target(
    target: str,
    rules: RulesSource,
    how: TargetOptions = TargetOptions(),
    options: ApplyOptions = ApplyOptions(),
    progress: ProgressFn | None = None,
) -> ApplyResult:
    """``initscope apply``: re-initialize TARGET by ``rules`` and write the result.

    The rules are checked first, then the output path, then the target is opened; nothing is
    written unless every check passes, and the output is written atomically.
    """
    from initscope.io.targets import resolve_target

    rs = _as_rules(rules)
    try:
        spec, input_path = resolve_target(target, how)
    except InitScopeError:
        # A spec's problems are reported when the target is opened, after the output is
        # checked.
        spec, input_path = None, None
    output = _check_output(input_path, options)
    if how.meta:
        raise TargetError(
            "--meta builds no weights, so there is nothing for apply to initialize or save",
            "drop --meta",
        )
    with open_target(target, how) as (traced, ckpt):
        _check_inputs(output, ckpt, input_path, options)
        model = traced.model if traced is not None else (ckpt.module if ckpt else None)
        if traced is not None and ckpt is not None:
            _load_into(traced.model, ckpt)
        found = _target_sites(model, ckpt)
        plan = make_plan(
            found.sites,
            rs,
            seed=options.seed,
            unmatched=options.unmatched,
            defaults=traced.defaults if traced is not None else None,
            resettable=_resettable(model) if model is not None else None,
            bare=model is None,
        )
        if options.strict and (problems := strict_problems(plan)):
            raise RulesError(problems)
        if output is None:
            return ApplyResult(target, plan, None, rs.source)
        if model is not None:
            apply_plan(plan, found.tensors, model, progress)
            state = model.state_dict()
        else:
            assert ckpt is not None
            state = _apply_bare(plan, ckpt, found.keys, progress)
        provenance = _provenance(spec, ckpt, rs, plan)
        save_state_dict(state, output, provenance, replace=options.force or options.in_place)
    return ApplyResult(target, plan, output, rs.source)


def _check_inputs(
    output: Path | None, ckpt: Checkpoint | None, input_path: Path | None, options: ApplyOptions
) -> None:
    """Refuse, before any work, an output that is one of the files the checkpoint reads
    (besides the input itself under --in-place), and an --in-place rewrite of a checkpoint
    that holds more than a state dict (the rest would be lost)."""
    if output is not None and ckpt is not None:
        refuse_input_files(output, ckpt.files, allowed=input_path if options.in_place else None)
    if options.in_place and output is not None and ckpt is not None and ckpt.extra:
        shown = ", ".join(ckpt.extra[:4]) + (" ..." if len(ckpt.extra) > 4 else "")
        raise OutputError(
            f"{ckpt.path} holds more than a state dict ({shown}); --in-place would "
            "replace it with the state dict alone",
            "write the result to another file with -o",
        )


@dataclass(frozen=True)
class _TargetSites:
    """The parameters the rules are matched against, and where their tensors are: a model's
    parameters by name (every tied name too), or for a bare checkpoint the saved key of
    each name (``keys``)."""

    sites: list[ParamSite]
    tensors: Mapping[str, torch.Tensor]
    keys: Mapping[str, str]


def _target_sites(model: torch.nn.Module | None, ckpt: Checkpoint | None) -> _TargetSites:
    """The sites of the model when there is one (the traced model, or the one a checkpoint's
    record rebuilt), else of the checkpoint's tensors alone."""
    if model is not None:
        tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
        return _TargetSites(sites_from_model(model), tensors, {})
    assert ckpt is not None
    keys, sites = sites_from_checkpoint(ckpt)
    return _TargetSites(sites, {}, keys)


def _provenance(
    spec: ModelSpec | None, ckpt: Checkpoint | None, rs: RuleSet, plan: Plan
) -> Provenance:
    """The record written with the output: initscope's version, how to rebuild the model,
    the source checkpoint, the rules file and its text, the seed, and the tied names."""
    # The source's record is carried on only when it rebuilt the model: a record that
    # was refused (or that is not one) stays behind rather than spread into outputs.
    if (
        spec is None
        and ckpt is not None
        and ckpt.provenance is not None
        and ckpt.module is not None
    ):
        record = ckpt.provenance.model
    else:
        record = _spec_record(spec)
    # Tied names, so readers of a .safetensors (which stores each name in full) know
    # the copies are one tensor.
    ties = {e.site.name: e.site.tied_to for e in plan.entries if e.site.tied_to}
    return Provenance(
        version=__version__,
        model=record,
        source=str(ckpt.path) if ckpt is not None else None,
        rules_file=rs.source,
        rules=rs.text,
        seed=plan.seed,
        extra={"ties": ties} if ties else {},
    )


def _apply_bare(
    plan: Plan, ckpt: Checkpoint, keys: Mapping[str, str], progress: ProgressFn | None = None
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under their saved names (``keys``: name to saved key),
    changed ones as fresh tensors."""
    changed = {e.site.name: e for e in plan.changed}
    tick = ticker(
        progress, [ckpt.infos[k].numel * ckpt.infos[k].dtype.itemsize for k in keys.values()]
    )
    state: dict[str, torch.Tensor] = {}
    loaded: dict[str, torch.Tensor] = {}
    for i, (name, key) in enumerate(keys.items()):
        first = ckpt.aliases.get(key)
        if first is not None and first in loaded:
            state[key] = loaded[first]  # tied: the same tensor under both names
            tick(i)
            continue
        t = ckpt.load(key)
        if name in changed:
            t = t.clone()
            _apply_entry(changed[name], t, plan.seed, None)
        loaded[key] = t
        state[key] = t
        tick(i)
    return state
