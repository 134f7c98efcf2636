"""Which rules apply to a study, from its instances' attributes (declarative, never eval'd).

A rule matches a study when at least one instance satisfies all of the rule's conditions;
a rule without conditions matches every study. `evaluate` also says why a rule matched or
not, for `umsrep routes test` and the logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Match, Routing, Rule

# A single chest radiograph is a whole study: it is complete when its association ends.
SINGLE_IMAGE_MODALITIES = frozenset({"CR", "DX"})
MAX_SHOWN = 5  # distinct values of a study listed in a reason
MAX_VALUE_CHARS = 40


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    matched: bool
    reasons: list[str]


@dataclass(frozen=True)
class _Condition:
    text: str  # what is asked, e.g. "modality in [CR, DX]"
    holds: Callable[[InstanceAttrs], bool]
    passed: Callable[[InstanceAttrs], str]  # why this instance satisfies it
    failed: Callable[[Sequence[InstanceAttrs]], str]  # why no instance does: the values seen


def evaluate(routing: Routing, instances: Sequence[InstanceAttrs]) -> list[RuleResult]:
    """Every rule, in order, with whether it matches the study and why."""
    return [_evaluate(rule, instances) for rule in routing.rules]


def route(routing: Routing, instances: Sequence[InstanceAttrs]) -> list[Rule]:
    """The rules that apply: the first matching one (apply: first) or all matching ones."""
    matching = _matching(routing, instances)
    return list(islice(matching, 1) if routing.apply == "first" else matching)


def quiet_seconds(routing: Routing, instances: Sequence[InstanceAttrs]) -> float:
    """The quiet period after which the study is complete: its first matching rule's."""
    rule = next(_matching(routing, instances), None)
    if rule is not None and rule.quiet_seconds is not None:
        return rule.quiet_seconds
    return routing.quiet_seconds


def completes_on_release(routing: Routing, instances: Sequence[InstanceAttrs]) -> bool:
    """Whether the study is complete as soon as the association that sent it ends."""
    rule = next(_matching(routing, instances), None)
    if rule is not None and rule.complete_on_release:
        return True
    return len(instances) == 1 and instances[0].modality in SINGLE_IMAGE_MODALITIES


def _matching(routing: Routing, instances: Sequence[InstanceAttrs]) -> Iterator[Rule]:
    for rule in routing.rules:
        conditions = _conditions(rule.match)
        if not conditions or any(_satisfies(i, conditions) for i in instances):
            yield rule


def _satisfies(instance: InstanceAttrs, conditions: list[_Condition]) -> bool:
    return all(c.holds(instance) for c in conditions)


def _evaluate(rule: Rule, instances: Sequence[InstanceAttrs]) -> RuleResult:
    conditions = _conditions(rule.match)
    if not conditions:
        return RuleResult(rule, True, ["no conditions: matches every study"])
    if not instances:
        return RuleResult(rule, False, ["the study has no instances"])
    hits = [i for i in instances if _satisfies(i, conditions)]
    if hits:
        reasons = [c.passed(hits[0]) for c in conditions]
        if len(instances) > 1:
            reasons.append(f"{len(hits)} of {len(instances)} instances match")
        return RuleResult(rule, True, reasons)
    reasons = [c.failed(instances) for c in conditions
               if not any(c.holds(i) for i in instances)]
    if not reasons:  # each condition holds for some instance, but never all for one
        reasons = [f"no single instance has all of: {'; '.join(c.text for c in conditions)}"]
    return RuleResult(rule, False, reasons)


def _conditions(match: Match) -> list[_Condition]:
    """The conditions a match sets, in the order of Match's fields."""
    conditions = []
    for name in Match.model_fields:
        expected = getattr(match, name)
        if expected is None:
            continue
        if name == "spectral_doppler":
            conditions.append(_spectral(expected))
        elif name.endswith("_re"):  # body_part_re searches InstanceAttrs.body_part...
            conditions.append(_search(name.removesuffix("_re"), expected))
        else:
            conditions.append(_one_of(name, expected))
    return conditions


def _one_of(attr: str, allowed: list[str]) -> _Condition:
    listed = f"[{', '.join(allowed)}]"
    return _Condition(
        text=f"{attr} in {listed}",
        holds=lambda i: _value(i, attr) in allowed,
        passed=lambda i: f"{attr} {_shown([_value(i, attr)])} in {listed}",
        failed=lambda study: f"{attr} {_shown([_value(i, attr) for i in study])} not in {listed}",
    )


def _search(attr: str, pattern: str) -> _Condition:
    regex = _compiled(pattern)
    return _Condition(
        text=f"{attr} matches '{pattern}'",
        holds=lambda i: regex.search(_value(i, attr)) is not None,
        passed=lambda i: f"{attr} {_shown([_value(i, attr)], quote=True)} matches '{pattern}'",
        failed=lambda study: f"{attr} {_shown([_value(i, attr) for i in study], quote=True)} "
                             f"does not match '{pattern}'",
    )


def _spectral(wanted: bool) -> _Condition:
    return _Condition(
        text="a spectral Doppler region" if wanted else "no spectral Doppler region",
        holds=lambda i: i.spectral_doppler == wanted,
        passed=lambda i: "spectral Doppler region present" if wanted
                         else "no spectral Doppler region",
        failed=lambda study: "no instance with a spectral Doppler region" if wanted
                             else "every instance has a spectral Doppler region",
    )


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _value(instance: InstanceAttrs, attr: str) -> str:
    value = getattr(instance, attr)
    # image_type_re is searched in the values joined as DICOM writes them: ORIGINAL\PRIMARY
    return "\\".join(value) if isinstance(value, tuple) else str(value)


def _shown(values: list[str], quote: bool = False) -> str:
    """Distinct values, first ones first, each cut short: `CT, MR` or `'PA', 'LAT'`.

    Quoted as written, not repr'd: a backslash in ORIGINAL\\PRIMARY stays one backslash.
    """
    distinct = list(dict.fromkeys(values))
    shown = [v if len(v) <= MAX_VALUE_CHARS else v[:MAX_VALUE_CHARS] + "..." for v in distinct]
    text = ", ".join(f"'{v}'" if quote and v else v or "(empty)" for v in shown[:MAX_SHOWN])
    more = len(distinct) - MAX_SHOWN
    return f"{text} and {more} more" if more > 0 else text
