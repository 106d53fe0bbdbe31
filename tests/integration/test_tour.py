"""The README's tour is what its commands print now: the marked blocks (`<!-- tour -->`) run
against the real engine, on copies of examples/ under a project of their own
(tests/tour.py), and the figures of the offline images are the engine's. A change that alters
what a tour command prints rewrites the README with it: `scripts/tour --write`."""

from __future__ import annotations

from tests import tour

FIX = "the README's tour drifted from what its commands print now (scripts/tour --write)"


def test_the_tour_blocks_print_what_the_readme_shows() -> None:
    lines = tour.README.read_text().split("\n")
    assert tour.blocks(lines), "no block of the README is marked <!-- tour -->"
    ran = tour.run_tour(lines)
    assert not ran.drift, FIX + ":\n" + "\n".join(ran.drift)


def test_the_images_figures_are_those_of_the_images_on_the_engine() -> None:
    lines = tour.README.read_text().split("\n")
    assert tour.blocks(lines, tour.IMAGES_MARK), "the images build block is not marked"
    facts = tour.image_facts(lines)
    assert not facts.drift, FIX + ":\n" + "\n".join(facts.drift)
