"""Routing a study from its instances' attributes: which rules apply, and why."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacs_node import router
from pacs_node.attrs import InstanceAttrs, extract
from pacs_node.config import Routing
from pacs_node.yamlconf import load_config

CR = InstanceAttrs(modality="CR", body_part="CHEST", image_type=("ORIGINAL", "PRIMARY"),
                   series_description="PA")
CR_LAT = InstanceAttrs(modality="CR", body_part="CHEST", series_description="LAT")
DOPPLER = InstanceAttrs(modality="US", spectral_doppler=True, manufacturer="Acme")
BMODE = InstanceAttrs(modality="US", manufacturer="Acme")
CT = InstanceAttrs(modality="CT", series_description="AXIAL")
MR = InstanceAttrs(modality="MR")

IGNORE: dict[str, Any] = {"ignore": {}}


def routing(*rules: dict[str, Any], **options: Any) -> Routing:
    named = [{"name": f"r{i}", **IGNORE, **rule} for i, rule in enumerate(rules)]
    return Routing.model_validate({"rules": named, **options})


def names(rules: list[Any]) -> list[str]:
    return [r.name for r in rules]


def test_first_applies_only_the_first_matching_rule() -> None:
    r = routing({"match": {"modality": ["CT"]}}, {"match": {"modality": ["CR", "DX"]}},
                {"name": "catch-all"})
    assert names(router.route(r, [CR])) == ["r1"]
    assert names(router.route(r, [MR])) == ["catch-all"]


def test_all_applies_every_matching_rule() -> None:
    r = routing({"match": {"modality": ["CR"]}}, {"match": {"modality": ["CT"]}},
                {"match": {"body_part_re": "CHEST"}}, apply="all")
    assert names(router.route(r, [CR])) == ["r0", "r2"]


def test_no_matching_rule_gives_an_empty_list() -> None:
    r = routing({"match": {"modality": ["CR"]}})
    assert router.route(r, [CT, MR]) == []
    assert router.route(routing(), [CR]) == []


def test_one_instance_must_satisfy_all_conditions() -> None:
    r = routing({"match": {"modality": ["US"], "spectral_doppler": True}})
    assert names(router.route(r, [BMODE, DOPPLER])) == ["r0"]
    # US without Doppler plus Doppler on another modality: each condition holds somewhere,
    # but not both on one instance.
    odd = InstanceAttrs(modality="OT", spectral_doppler=True)
    [result] = router.evaluate(r, [BMODE, odd])
    assert not result.matched
    assert result.reasons == ["no single instance has all of: modality in [US]; "
                              "a spectral Doppler region"]


def test_evaluate_explains_a_match() -> None:
    r = routing({"match": {"modality": ["CR", "DX"], "series_description_re": "PA|AP"}})
    [result] = router.evaluate(r, [CR_LAT, CR])
    assert result.matched
    assert result.reasons == ["modality CR in [CR, DX]",
                              "series_description 'PA' matches 'PA|AP'",
                              "1 of 2 instances match"]


def test_evaluate_explains_a_miss_with_the_values_seen() -> None:
    r = routing({"match": {"modality": ["CR", "DX"]}},
                {"match": {"modality": ["CR"], "series_description_re": "PA|AP"}},
                {"match": {"modality": ["US"], "spectral_doppler": True}},
                {"match": {"spectral_doppler": False}})
    ct, lateral, no_doppler, all_doppler = (
        router.evaluate(r, [CT])[0], router.evaluate(r, [CR_LAT])[1],
        router.evaluate(r, [BMODE])[2], router.evaluate(r, [DOPPLER])[3])
    assert (ct.matched, ct.reasons) == (False, ["modality CT not in [CR, DX]"])
    assert lateral.reasons == ["series_description 'LAT' does not match 'PA|AP'"]
    assert no_doppler.reasons == ["no instance with a spectral Doppler region"]
    assert all_doppler.reasons == ["every instance has a spectral Doppler region"]


def test_evaluate_lists_distinct_values_short() -> None:
    r = routing({"match": {"modality": ["CR"]}}, {"match": {"study_description_re": "CHEST"}})
    study = [CT, MR, CT, *(InstanceAttrs(modality=m) for m in ("PT", "NM", "XA", "RF")),
             InstanceAttrs(modality="")]
    assert router.evaluate(r, study)[0].reasons == [
        "modality CT, MR, PT, NM, XA and 2 more not in [CR]"]
    long = InstanceAttrs(study_description="X" * 60)
    assert router.evaluate(r, [long])[1].reasons == [
        f"study_description '{'X' * 40}...' does not match 'CHEST'"]


def test_evaluate_returns_every_rule_in_order() -> None:
    r = routing({"name": "a", "match": {"modality": ["CT"]}}, {"name": "b"})
    results = router.evaluate(r, [CT])
    assert [(x.rule.name, x.matched) for x in results] == [("a", True), ("b", True)]
    assert results[1].reasons == ["no conditions: matches every study"]


def test_empty_study_matches_only_rules_without_conditions() -> None:
    r = routing({"match": {"modality": ["CT"]}}, {"name": "any"})
    assert names(router.route(r, [])) == ["any"]
    assert router.evaluate(r, [])[0].reasons == ["the study has no instances"]


def test_spectral_doppler_matching() -> None:
    r = routing({"name": "doppler", "match": {"spectral_doppler": True}},
                {"name": "plain-us", "match": {"modality": ["US"], "spectral_doppler": False}})
    assert names(router.route(r, [BMODE, DOPPLER])) == ["doppler"]
    assert names(router.route(r, [BMODE])) == ["plain-us"]
    assert router.evaluate(r, [DOPPLER])[0].reasons == ["spectral Doppler region present"]


def test_list_fields_match_exactly() -> None:
    r = routing({"match": {"modality": ["CR"], "calling_ae": ["MOD1"], "called_ae": ["UMS"],
                           "sop_class_uid": ["1.2.3"]}})
    good = InstanceAttrs(modality="CR", calling_ae="MOD1", called_ae="UMS", sop_class_uid="1.2.3")
    assert names(router.route(r, [good])) == ["r0"]
    assert router.route(r, [InstanceAttrs(modality="CR", calling_ae="MOD10", called_ae="UMS",
                                          sop_class_uid="1.2.3")]) == []
    assert router.route(r, [InstanceAttrs(modality="cr", calling_ae="MOD1", called_ae="UMS",
                                          sop_class_uid="1.2.3")]) == []


def test_regexes_are_searched_and_image_type_is_backslash_joined() -> None:
    r = routing({"match": {"image_type_re": r"^ORIGINAL\\PRIMARY$"}},
                {"match": {"manufacturer_re": "(?i)acme"}})
    assert names(router.route(r, [CR])) == ["r0"]
    assert names(router.route(r, [BMODE])) == ["r1"]  # searched, not anchored: "Acme"
    assert router.route(r, [CT]) == []
    # shown as written: one backslash in the value, the pattern as configured
    derived = InstanceAttrs(image_type=("DERIVED", "SECONDARY"))
    assert router.evaluate(r, [derived])[0].reasons == [
        "image_type 'DERIVED\\SECONDARY' does not match '^ORIGINAL\\\\PRIMARY$'"]


def test_quiet_seconds_of_the_first_matching_rule() -> None:
    r = routing({"match": {"modality": ["US"]}, "quiet_seconds": 30},
                {"match": {"modality": ["CR"]}}, quiet_seconds=7)
    assert router.quiet_seconds(r, [DOPPLER]) == 30
    assert router.quiet_seconds(r, [CR, CR]) == 7  # the rule has none: routing's
    assert router.quiet_seconds(r, [CT]) == 7  # no rule matches: routing's


def test_completes_on_release() -> None:
    r = routing({"match": {"modality": ["US"]}, "complete_on_release": True},
                {"match": {"modality": ["CR", "CT"]}})
    assert router.completes_on_release(r, [DOPPLER, BMODE])  # the rule says so
    assert router.completes_on_release(r, [CR])  # content: a single chest image
    assert router.completes_on_release(routing(), [InstanceAttrs(modality="DX")])
    assert not router.completes_on_release(r, [CR, CR_LAT])  # a second view may follow
    assert not router.completes_on_release(r, [CT])
    assert not router.completes_on_release(r, [])


def chest(body_part: str = "", view: str = "", modality: str = "CR") -> InstanceAttrs:
    return InstanceAttrs(modality=modality, body_part=body_part, view_position=view)


FRONTAL_CHESTS = [chest(), chest("CHEST", "PA"), chest("chest", "ap"), chest("THORAX", ""),
                  chest("", "PA", "DX"), chest("CHEST_PA"), chest("Thorax a.p."),
                  chest("TÓRAX"), chest("TORACE"), chest("LUNG", "AP"), chest("PORT CHEST")]
NOT_FRONTAL_CHESTS = [chest("EXTREMITY"), chest("LEG", "AP"), chest("TSPINE"),
                      chest("THORACIC SPINE"), chest("SKULL", "PA"), chest("CHEST", "LL"),
                      chest("CHEST", "RL"), chest("", "LATERAL"), chest("THORAX", "LAT"),
                      chest("CHEST", "RLO"), chest("CHEST", "PA", "CT")]


def shown(instance: InstanceAttrs) -> str:
    return f"{instance.modality}/{instance.body_part or '-'}/{instance.view_position or '-'}"


@pytest.mark.parametrize("instance", FRONTAL_CHESTS, ids=shown)
def test_the_default_rules_send_frontal_chests_to_cxr(instance: InstanceAttrs) -> None:
    assert names(router.route(load_config(None).routing, [instance])) == ["chest-xray"]


@pytest.mark.parametrize("instance", NOT_FRONTAL_CHESTS, ids=shown)
def test_the_default_rules_store_other_anatomy_and_lateral_views(instance: InstanceAttrs
                                                                 ) -> None:
    assert names(router.route(load_config(None).routing, [instance])) == ["store-only"]


def test_the_default_rules_say_why_an_image_is_no_frontal_chest() -> None:
    routing = load_config(None).routing
    tibia, lateral = router.evaluate(routing, [chest("EXTREMITY")])[0], \
        router.evaluate(routing, [chest("CHEST", "LL")])[0]
    assert tibia.reasons == [
        "body_part 'EXTREMITY' does not match '(?i)^$|chest|thorax|t[oó]rax|torace|lung'"]
    assert lateral.reasons == ["view_position 'LL' does not match '(?i)^(PA|AP)?$'"]
    # A lateral beside a PA in one study: the study goes to cxr, for the PA.
    assert names(router.route(routing, [chest("CHEST", "LL"), chest("CHEST", "PA")])) == [
        "chest-xray"]


def test_view_position_is_extracted_and_older_journal_rows_lack_it() -> None:
    ds = Dataset()
    ds.Modality, ds.ViewPosition = "DX", "AP "
    assert extract(ds).view_position == "AP"
    assert extract(Dataset()).view_position == ""
    assert InstanceAttrs.from_json({"modality": "CR", "body_part": "CHEST"}).view_position == ""
