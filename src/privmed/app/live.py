"""Live camera mode of the app: WebRTC widget glue only. The per-frame logic (newest-frame slot,
smoothing, FPS) is ``privmed.inference.stream``; each frame is predicted by the backend's
``analyse``, the call an upload takes."""
from __future__ import annotations

import time

import streamlit as st

from privmed.app.backend import BackendError
from privmed.inference.stream import LiveStream, frame_bytes

SMOOTH_FRAMES = 8
# host candidates only: works on localhost and a LAN with no internet (no Google STUN lookups)
RTC_CONFIGURATION = {"iceServers": []}
CONSTRAINTS = {"video": {"width": {"ideal": 640}, "height": {"ideal": 480}}, "audio": False}


def _predictor(be, model_id: str):
    def predict(frame) -> dict:
        data = frame_bytes(frame.to_ndarray(format="rgb24"))
        # a camera sees a film or a monitor: the film is found and straightened, as for a snapshot
        return be.analyse(model_id, data, "live-frame.bmp", explain=False, source="camera")
    return predict


def _stream(be, card: dict) -> tuple[LiveStream, object]:
    """One LiveStream and video sink per session and model (they outlive reruns of the script)."""
    from streamlit_webrtc.sink import VideoSinkTrack

    store = st.session_state.setdefault("_privmed_live", {})
    if card["id"] not in store:
        live = LiveStream(_predictor(be, card["id"]), n=SMOOTH_FRAMES, decision=card.get("decision"),
                          refuse=(BackendError, ValueError))
        store[card["id"]] = (live, VideoSinkTrack(live.submit))
    return store[card["id"]]


def live_widget(be, card: dict):
    """Draw the live tab; returns a function that keeps the readout current while the stream plays
    (call it last: it loops until the user stops the stream or reruns the page), or None."""
    try:
        from streamlit_webrtc import WebRtcMode, webrtc_streamer
    except ImportError:
        st.info("The live mode needs streamlit-webrtc: pip install 'privmed[serve]'.")
        return None
    st.caption(f"Point the camera at a film or screen. Each frame goes through the quality gate and the model; "
               f"only the newest frame is analysed (older ones are dropped) and the result is the mean of the "
               f"last {SMOOTH_FRAMES} frames.")
    live, sink = _stream(be, card)
    try:
        ctx = webrtc_streamer(key=f"live-{card['id']}", mode=WebRtcMode.SENDONLY,
                              rtc_configuration=RTC_CONFIGURATION, media_stream_constraints=CONSTRAINTS,
                              sink_video_track=sink)
    except Exception as e:  # e.g. no Streamlit server behind the script (AppTest): the rest of the app still works
        st.warning(f"The live camera is unavailable in this session ({type(e).__name__}).")
        return None
    box = st.empty()
    was_playing = st.session_state.get(f"_privmed_live_playing/{card['id']}")
    st.session_state[f"_privmed_live_playing/{card['id']}"] = ctx.state.playing
    if ctx.state.playing and not was_playing:
        live.reset()  # a new camera session starts its counters at zero
    show_readout(box, live.stats(), card)
    if not ctx.state.playing:
        return None

    def follow() -> None:
        while ctx.state.playing:  # a click (stop, another widget) reruns the script and ends this loop
            show_readout(box, live.stats(), card)
            time.sleep(0.5)
    return follow


def show_readout(box, s: dict, card: dict) -> None:
    sm, last = s["smoothed"], s["last"]
    lat = f"{s['latency_ms']:.0f} ms" if s["latency_ms"] is not None else "n/a"
    busy = f"{s['predict_ms']:.0f} ms" if s["predict_ms"] is not None else "n/a"
    with box.container():
        st.markdown(f"**Frames predicted: {s['predicted']}** · dropped: {s['dropped']} of {s['received']} · "
                    f"{s['fps']:.1f} FPS predicted (camera {s['input_fps']:.1f} FPS) · latency {lat} (median; "
                    f"of which prediction {busy})")
        if not s["received"]:
            st.info("Press START to stream from the camera.")
            return
        if sm["abstain"]:
            st.warning(f"Live result: refused ({sm['accepted']} of the last {sm['frames']} frames accepted): "
                       + "; ".join(sm["reasons"]))
        else:
            p = sm["probabilities"][sm["label"]]
            st.success(f"Live result: **{sm['label']}** (mean probability {p:.2f} over the last "
                       f"{sm['accepted']} accepted frames of {sm['frames']})")
        if last:
            state = "refused: " + "; ".join(last["reasons"]) if last["abstain"] else "accepted"
            st.caption(f"latest frame: {last['label'] or 'no result'} ({state}); "
                       f"{s['refused']} frames refused so far")
