"""The bundled model card: card.md is rendered from card.json, never edited by hand."""

from __future__ import annotations

import json
from pathlib import Path

from export.card import render_card

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "cxr-compact" / "1"


def test_card_md_is_what_card_json_renders() -> None:
    card = json.loads((BUNDLED / "card.json").read_text())
    assert (BUNDLED / "card.md").read_text() == render_card(card)


def test_card_records_the_shortcut_check_and_the_ward_film_training() -> None:
    card = json.loads((BUNDLED / "card.json").read_text())
    text = (BUNDLED / "card.md").read_text()
    assert card["training"]["arguments"]["icu"] > 0
    assert "## Shortcut check: devices and burned-in text (counterfactual)" in text
    assert set(card["shortcuts"]["variants"]) >= {"devices", "text"}
    assert "hard genuine: val films as ward films" in card["domain"]["evaluation"]["genuine"]
