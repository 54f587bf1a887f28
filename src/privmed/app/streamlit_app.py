"""privmed clinician app (Streamlit). Run with ``privmed app``.

Choose a task, upload PNG/JPEG/DICOM images (or take a camera frame, or stream the camera live), and see the
quality verdict, the calibrated prediction, the abstain message, an optional Grad-CAM overlay, the model card
with its privacy ledger, and download the report as JSON or FHIR R4.
"""
from __future__ import annotations

import hmac
import json

import streamlit as st

from privmed.app.backend import TASK_LABELS, BackendError, make_backend, task_label
from privmed.app.launch import check_address
from privmed.config import settings
from privmed.errors import PrivmedError
from privmed.inference.intended_use import describe
from privmed.inference.report import ABSTAIN_MESSAGE, fhir

st.set_page_config(page_title="privmed: private medical image classification", layout="wide")


def address_gate() -> None:
    """The listen rule of ``privmed app``, enforced here too so ``streamlit run`` cannot skip it.
    No ``server.address`` means Streamlit listens on every interface."""
    try:
        check_address(st.get_option("server.address") or "0.0.0.0")
    except PrivmedError as e:
        st.error(str(e))
        st.stop()


def password_gate() -> None:
    secret = settings().app_password
    want = secret.get_secret_value() if secret else None
    if not want or st.session_state.get("authenticated"):
        return
    st.title("privmed")
    pw = st.text_input("Password", type="password", key="password")
    if pw and hmac.compare_digest(pw.encode(), want.encode()):
        st.session_state["authenticated"] = True
        st.rerun()
    if pw:
        st.error("wrong password")
    st.stop()


@st.cache_resource(show_spinner=False)
def _backend(config: tuple):
    return make_backend()


def backend():
    """One backend per configuration (the settings are read from the environment)."""
    s = settings()
    return _backend((s.api_url, s.api_key.get_secret_value() if s.api_key else None,
                     tuple(str(p) for p in s.app_bundles), str(s.bundles) if s.bundles else None))


def ledger_rows(card: dict) -> list[dict]:
    p = card.get("privacy") or {}
    names = [("mechanism", "mechanism"), ("epsilon", "epsilon (spent)"), ("delta", "delta"),
             ("noise_multiplier", "noise multiplier"), ("max_grad_norm", "clipping norm"),
             ("sample_rate", "sample rate"), ("steps", "steps"), ("epochs", "epochs"),
             ("accountant", "accountant"), ("unit_of_privacy", "unit of privacy"),
             ("neighbouring_relation", "neighbouring datasets"), ("randomness", "noise source")]
    return [{"field": label, "value": str(p.get(k))} for k, label in names if k in p]


def show_card(card: dict) -> None:
    st.subheader("Model card")
    st.markdown(f"**{card.get('id')}**: {task_label(card.get('task'))}, trained on `{card.get('dataset')}`, "
                f"architecture `{card.get('architecture')}`; classes: {', '.join(card.get('classes') or [])}")
    st.caption(f"version (weights SHA-256): {card.get('version')}")
    st.markdown("**Privacy ledger**")
    st.info(card.get("privacy_statement", ""))
    st.table(ledger_rows(card))
    vm = card.get("test_metrics") or {}
    if vm:
        st.markdown("**Test metrics (public test set)**")
        st.table([{"metric": k, "value": f"{v:.3f}" if isinstance(v, float) else str(v)} for k, v in vm.items()])
    ood = card.get("ood") or {}
    if ood:
        st.caption(f"Out-of-distribution check: {ood.get('method')} on a {ood.get('embedding_dims')}-d embedding, "
                   f"threshold {ood.get('threshold'):.2f} (aims to refuse {100 * ood.get('target_refusal', 0):.1f} % "
                   f"of in-distribution images); fitted on {ood.get('fitted_on', 'validation')}")
    st.markdown(f"**Intended use**: {describe(card.get('intended_use'))}")
    if card.get("site_calibration"):  # it replaces the bundle's threshold, temperature and OOD reference
        st.info(card["site_calibration"]["statement"])
    st.caption(card.get("use", ""))


def show_result(name: str, pixels, res: dict, card: dict, show_cam: bool) -> None:
    """``pixels``: the decoded image the backend returned with the result (None: nothing to show)."""
    st.markdown(f"### {name}")
    left, right = st.columns([1, 1])
    with left:
        if pixels is not None:
            if show_cam and res.get("heatmap") is not None:
                import numpy as np

                from privmed.inference.explain import overlay

                st.image(overlay(pixels, np.asarray(res["heatmap"], np.float32)), caption="Grad-CAM overlay",
                         width="stretch")
            else:
                st.image(pixels, caption="uploaded image", clamp=True, width="stretch")
        rect = (res.get("image") or {}).get("rectified")
        if rect is not None:
            st.caption("Camera photo: film found and straightened (shown as the model saw it)" if rect.get("found")
                       else "Camera photo: no film outline found; the photo was checked as it is")
    with right:
        q = res.get("quality") or {}
        if q.get("ok", True):
            st.success("Image quality: OK")
        else:
            st.error("Image quality: " + "; ".join(r["message"] for r in q.get("reasons", [])))
        if res.get("abstain"):
            st.warning(f"**{ABSTAIN_MESSAGE}**  \n" + "  \n".join(res.get("abstain_reasons") or []))
        p = res["probabilities"]
        st.metric("Model output" + (" (not reliable: abstained)" if res.get("abstain") else ""), str(res.get("label")))
        st.caption(f"calibrated probability {p.get(res.get('label'), 0):.2f}; all classes:")
        st.bar_chart({"probability": p}, horizontal=True, height=60 + 35 * len(p))
        w = (res.get("image") or {}).get("window") or {}
        if w.get("center") is not None and (res.get("image") or {}).get("modality") == "CT":
            origin = {"file": "the file", "default": "the model's default"}.get(w["source"], "the request")
            st.caption(f"CT window: {w['name']} (centre {w['center']:g} HU, width {w['width']:g} HU; from {origin})")
        report = {k: v for k, v in res.items() if k != "heatmap"}
        report["model"] = {k: card.get(k) for k in ("id", "task", "version", "privacy", "intended_use")}
        c1, c2 = st.columns(2)
        base = name.rsplit(".", 1)[0]
        c1.download_button("Download JSON report", json.dumps(report, indent=2), f"{base}.privmed.json",
                           "application/json", key=f"json-{res['input_sha256']}-{name}")
        c2.download_button("Download FHIR report", json.dumps(fhir([res], card), indent=2), f"{base}.fhir.json",
                           "application/fhir+json", key=f"fhir-{res['input_sha256']}-{name}")


def main() -> None:
    address_gate()
    password_gate()
    st.title("privmed: differentially private image classification")
    st.caption("Research prototype, not a medical device. Every output is a suggestion for a qualified reader.")
    be = backend()
    try:
        cards = be.models()
    except BackendError as e:
        st.error(str(e))
        st.stop()
    if not cards:
        st.error("No model bundles found. Train one with `privmed train` (they go to bundles/<dataset>) "
                 "or start the app with `privmed app --bundle PATH`.")
        st.stop()
    with st.sidebar:
        order = list(TASK_LABELS)  # pneumonia first: the main use case opens by default
        cards = sorted(cards, key=lambda c: order.index(c.get("task")) if c.get("task") in order else len(order))
        labels = {f"{task_label(c.get('task'))}: {c['id']}": c for c in cards}
        choice = st.selectbox("Task", list(labels), key="task")
        card = labels[choice]
        st.caption(f"Intended use: {describe(card.get('intended_use'))}")  # a DICOM outside it is refused
        show_cam = st.toggle("Show Grad-CAM overlay", value=False, key="gradcam")
        st.caption(f"backend: {be.name}")
    tab_up, tab_cam, tab_live, tab_card = st.tabs(["Upload images", "Camera", "Live camera", "Model card"])
    with tab_card:
        show_card(card)
    with tab_up:
        files = st.file_uploader("PNG, JPEG or DICOM images", accept_multiple_files=True, key="upload",
                                 type=["png", "jpg", "jpeg", "dcm", "dicom"])
    with tab_cam:
        shot = st.camera_input("Photograph a film or screen (quality is checked)", key="camera")
    with tab_live:
        from privmed.app.live import live_widget

        follow_live = live_widget(be, card)
    items = [(f.name, f.getvalue(), "file") for f in files or []]
    if shot is not None:  # a photo of a film or monitor: the service finds and straightens the film
        items.append(("camera.jpg", shot.getvalue(), "camera"))
    if not items:
        st.info("Upload one or more images (or take a camera frame) to classify them with the selected model.")
    for name, data, source in items:
        try:
            with st.spinner(f"analysing {name}"):
                res, pixels = be.analyse_for_display(card["id"], data, name, explain=show_cam, source=source)
        except BackendError as e:
            st.error(f"{name}: {e}")
            continue
        show_result(name, pixels, res, card, show_cam)
    if follow_live is not None:
        follow_live()  # last: it keeps the live readout current until the stream stops


main()
