"""Every reference in the code to the theory document resolves inside the repository."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "THEORY.md"
SOURCES = [p for d in ("pacbayes", "experiments", "benchmarks", "scripts")
           for p in sorted((ROOT / d).rglob("*.py"))]
SECTION = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.M)
REF = re.compile(r"THEORY\.md(?:,)? §\s?(\d+(?:\.\d+)?)")


def _sections() -> set[str]:
  return set(SECTION.findall(THEORY.read_text()))


def test_theory_document_has_numbered_sections():
  sections = _sections()
  assert {"1", "1.3", "4.3", "5.1"} <= sections


def test_every_theory_reference_names_an_existing_section():
  sections = _sections()
  bad = []
  for path in SOURCES:
    for i, line in enumerate(path.read_text().splitlines(), 1):
      bad += [f"{path.relative_to(ROOT)}:{i}: §{s}" for s in REF.findall(line)
              if s not in sections]
  assert not bad, "references to missing sections:\n" + "\n".join(bad)


def test_no_reference_points_outside_the_repository():
  bad = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
         for i, line in enumerate(p.read_text().splitlines(), 1)
         if "DESIGN.md" in line or "../shared" in line]
  assert not bad, "references to files outside the repository:\n" + "\n".join(bad)
