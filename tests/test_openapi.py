"""The OpenAPI document of the v2 surface (issue #14 item 5, issue #15 item 3).

The document shipped in the package is valid OpenAPI, both tiers serve it at
``/v2/openapi.json``, and schemathesis fuzzes both tiers (real processes on
127.0.0.1, every layer on) from it: every generated case goes to the model server
and to the gateway; neither answers a 5xx the document does not allow (a 503 only
where it says "not ready"), every answer's status, content type and body conform
to the document, and the gateway gives the model server's status and error. The
default run is small (3 examples per operation); ``make fuzz`` runs 150.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from optkit.service import Stack, launch_stack
from optkit.service._openapi import OPENAPI_PATH, openapi_document

INTEGRATED = Path(__file__).resolve().parents[1] / "experiments" / "integrated.yaml"
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _server_error(status: int, documented: set[str]) -> bool:
    """A 5xx the document does not allow for a healthy stack: any 500/502/504, and a 503
    where the operation does not say "not ready" (a model on disk but not loaded is 503)."""
    return status >= 500 and not (status == 503 and "503" in documented)


@pytest.fixture(scope="module")
def integrated(repository: Path) -> Iterator[Stack]:
    with launch_stack(INTEGRATED, repository=repository) as running:
        yield running


def test_document_is_valid_openapi() -> None:
    schemathesis.openapi.from_dict(openapi_document()).validate()
    broken = copy.deepcopy(openapi_document())
    broken["paths"]["/v2"]["get"]["responses"] = "none"  # the validator can fail
    with pytest.raises(ValueError):  # jsonschema_rs.ValidationError
        schemathesis.openapi.from_dict(broken).validate()


def test_both_tiers_serve_the_document(integrated: Stack) -> None:
    for base in (integrated.model_server_url, integrated.url):
        resp = requests.get(base + OPENAPI_PATH, timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json() == openapi_document()


def _error_of(response: requests.Response) -> object:
    try:
        return response.json().get("error")
    except (ValueError, AttributeError):
        return None


def _fuzz(stack: Stack, max_examples: int) -> Counter[int]:
    """Every operation of the served document, ``max_examples`` generated cases each,
    each case sent to both tiers: no undocumented 5xx, answers conforming to the
    document, and the gateway's status and error the model server's. Returns the
    statuses answered (per case)."""
    tiers = (stack.model_server_url, stack.url)
    schema = schemathesis.openapi.from_url(stack.url + OPENAPI_PATH)
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            documented = set(operation.definition.raw.get("responses", {}))
            strategy = operation.as_strategy()
            if operation.path.startswith("/v2/models/"):
                # random model names mostly meet a 404: also aim generated bodies, valid
                # and invalid by the schema, at a real model (never load/unload one)
                pinned = {"model": "digits-mlp"}
                if "{version}" in operation.path:
                    pinned["version"] = "1"
                strategy = st.one_of(
                    strategy, operation.as_strategy(path_parameters=pinned),
                    operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=pinned))

            @settings(max_examples=max_examples, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                answers = [case.call(base_url=base, session=session, timeout=30)
                           for base in tiers]
                for response in answers:
                    assert not _server_error(response.status_code, documented), \
                        f"{response.status_code} {response.text[:300]}: {case.as_curl_command()}"
                    case.validate_response(response, checks=CHECKS)
                ms, gw = answers
                statuses[ms.status_code] += 1
                assert gw.status_code == ms.status_code, \
                    f"gateway {gw.status_code} {gw.text[:200]}, model server " \
                    f"{ms.status_code} {ms.text[:200]}: {case.as_curl_command()}"
                if ms.status_code >= 400:
                    assert _error_of(gw) == _error_of(ms), case.as_curl_command()

            run()
    return statuses


def test_schema_fuzzing_small(integrated: Stack) -> None:
    statuses = _fuzz(integrated, max_examples=3)
    assert sum(statuses.values()) >= 17 and statuses[200] and statuses[400]


@pytest.mark.heavy
def test_schema_fuzzing_heavy(integrated: Stack) -> None:
    statuses = _fuzz(integrated, max_examples=150)
    print(f"{sum(statuses.values())} generated requests, each to both tiers; "
          f"statuses {dict(statuses)}")
    assert sum(statuses.values()) >= 17 * 20
