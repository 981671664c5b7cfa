"""The OpenAPI document (docs/openapi.json, DESIGN 7.7): valid OpenAPI 3.1, served by the edge,
naming every route the services register, and true of the live cluster: a bounded number of
generated requests per operation (schemathesis, a fixed seed) get no 5xx and answers that
match the documented status codes, content types and schemas."""
import json
import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

from conftest import Api, request, user_with_token

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DOC = os.path.join(ROOT, "docs", "openapi.json")
EDGE = f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}"
EXAMPLES = int(os.environ.get("PARLEY_OPENAPI_EXAMPLES", "12"))

schema = schemathesis.openapi.from_path(DOC)


def test_the_document_is_valid_and_served_by_the_edge():
    with open(DOC) as f:
        doc = json.load(f)
    validate(doc)  # raises on anything that is not OpenAPI 3.1
    r = request(EDGE, "GET", "/v1/openapi.json")
    assert r.status == 200 and r.headers.get("Content-Type", "").startswith("application/json"), r
    assert r.json == doc


def _registered_routes():
    """(method, path) of every /v1 route in the services' route tables; a path ending in '/'
    is a prefix."""
    out = set()
    for svc in ("auth", "store", "gateway"):
        d = os.path.join(ROOT, "services", svc)
        for name in os.listdir(d):
            if name.endswith(".c"):
                with open(os.path.join(d, name)) as f:
                    out |= set(re.findall(r'\{"(GET|POST|PUT|PATCH|DELETE)", "(/v1/[^"]*)"', f.read()))
    return out


def test_every_registered_route_is_described():
    with open(DOC) as f:
        paths = json.load(f)["paths"]
    routes = _registered_routes()
    assert len(routes) > 20
    missing = []
    for method, path in routes:
        m = method.lower()
        if path.endswith("/"):
            ok = any(p.startswith(path) and m in ops for p, ops in paths.items())
        else:
            ok = m in paths.get(path, {})
        if not ok:
            missing.append((method, path))
    assert not missing, missing
    # and nothing is described that no service serves
    for p, ops in paths.items():
        for m in ops:
            served = any(m == meth.lower() and (p == rp or (rp.endswith("/") and p.startswith(rp)))
                         for meth, rp in routes)
            assert served, (m, p)


@pytest.fixture
def token(edge):
    """A user of its own per operation: a logout or a password change generated for one
    operation does not take the others' credentials."""
    return user_with_token(Api(edge.base), "oa")[1]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_live_answers_match_the_document(case, token):
    case.call_and_validate(base_url=EDGE, headers={"Authorization": "Bearer " + token},
                           checks=[not_a_server_error, status_code_conformance,
                                   content_type_conformance, response_schema_conformance],
                           timeout=40)
