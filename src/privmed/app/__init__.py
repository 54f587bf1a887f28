"""Clinician app (Streamlit). ``privmed app`` starts it; ``backend`` holds the non-UI logic."""
