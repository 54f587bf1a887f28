"""Fuzzing the REST API against its own OpenAPI schema (schemathesis, in-process ASGI) with valid
keys: no 5xx, and every response matches what the schema declares (status codes, content types,
bodies). A bounded number of examples per operation keeps this under a minute; the fuller run is
``PRIVMED_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_api.py`` (docs/SERVING.md)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, settings  # noqa: E402

from privmed import config  # noqa: E402
from privmed.api.server import Settings, create_app  # noqa: E402

EXAMPLES = config.settings().fuzz_examples
# a site calibration's body is one zip archive: binary, sent as generated
schemathesis.serializer.alias("application/zip", "application/octet-stream")


@pytest.fixture(scope="module")
def fuzz_app(small_bundle, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "audit.db"
    app = create_app(Settings(db_url=f"sqlite:///{db}", bundles=[small_bundle], scan_default_bundles=False))
    store = app.state.store
    app.state.fuzz_keys = {role: store.create_key(role)[1] for role in ("clinician", "auditor", "admin")}
    return app


def key_for(path: str, keys: dict) -> str:
    """The role each endpoint serves, so the fuzzer reaches the handlers, not only the 403s."""
    if path.startswith("/v1/predict"):
        return keys["clinician"]
    if path.startswith("/v1/audit"):
        return keys["auditor"]
    return keys["admin"]


def fuzz_operation(op, keys: dict, examples: int) -> None:
    from hypothesis import given
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # A schema cannot say "a readable radiograph" or "a labelled site sample": schema-valid bytes (schemathesis
    # sends a 1x1 PNG or random bytes) are rightly refused with 400/415/422, so these two routes are spared
    # only that one check.
    content_checked = ("/v1/predict", "/v1/models/{model_ref}/site-calibration")
    excluded = [positive_data_acceptance] if op.path in content_checked else []

    @given(case=op.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {key_for(case.path, keys)}"},
                               excluded_checks=excluded)

    run()


def test_api_conforms_to_its_schema(fuzz_app):
    # loaded inside the test (schemathesis' lazy pytest fixtures do not run under this pytest)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures, ops = [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        ops += 1
        try:
            fuzz_operation(op, fuzz_app.state.fuzz_keys, EXAMPLES)
        except BaseException as e:  # schemathesis raises an exception group; collect every operation's
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{op.method.upper()} {op.path}: {type(e).__name__}: {str(e)[:1500]}")
    assert ops >= 10
    assert not failures, "\n\n".join(failures)
