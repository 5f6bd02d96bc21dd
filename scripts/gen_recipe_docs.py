"""Write docs/recipe-reference.md from the recipe schema; tests/test_recipe.py fails while the committed file is
stale."""

from pathlib import Path

from edgekit.fsutil import write_text
from edgekit.recipe import reference_markdown

path = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"
write_text(path, reference_markdown())
print(f"wrote {path}")
