"""Synthetic products and the prompt text built from them.

A product is a category, a made-up brand and model, 5-6 attribute values drawn from the category's schema
(gapo.data.catalog) and one use case. Every random choice comes from a `random.Random` seeded with a string
that names the product, so a product is the same whatever else is generated around it (and the generator can
be split across processes without changing a byte).

Prompt format (docs/architecture.md): one instruction line, the product facts one per line, then a
`Requirements:` line followed by one IFEval constraint description per line.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from gapo.data import catalog

CATEGORY_BY_NAME = {c.name: c for c in catalog.CATEGORIES}

INSTRUCTIONS = (
    "Write a product description for the item below.",
    "Write a short product description for this item.",
    "Describe this product for an online shop.",
    "Write the product page copy for the following item.",
)
REQUIREMENTS_HEADER = "Requirements:"


@dataclass(frozen=True)
class Product:
    pid: str
    category: str
    brand: str
    model: str
    noun: str
    attributes: tuple[tuple[str, str], ...]  # (attribute name, value), schema order
    use: str

    @property
    def name(self) -> str:
        return f"{self.brand} {self.model} {self.noun}"

    @property
    def noun_lower(self) -> str:
        return self.noun.lower()

    @property
    def spec(self) -> catalog.Category:
        return CATEGORY_BY_NAME[self.category]

    def phrases(self, attribute: str) -> tuple[str, ...]:
        for a in self.spec.attributes:
            if a.name == attribute:
                return a.phrases
        raise KeyError(attribute)

    def fact_lines(self) -> list[str]:
        lines = [f"Product: {self.name}", f"Category: {self.category}", f"Brand: {self.brand}"]
        lines += [f"{name}: {value}" for name, value in self.attributes]
        lines.append(f"Good for: {self.use}")
        return lines

    def fixed_text(self) -> str:
        """Text the writer cannot avoid (name, brand, noun): used to keep letter/keyword limits satisfiable."""
        return f"{self.name} {self.brand} {self.noun}"


def seeded_rng(*parts: object) -> random.Random:
    # String seeds go through SHA-512 in CPython, so they do not depend on PYTHONHASHSEED.
    return random.Random(":".join(str(p) for p in parts))


def make_product(seed: int, pid: str, category: catalog.Category) -> Product:
    rng = seeded_rng(seed, "product", pid)
    brand = rng.choice(catalog.BRAND_HEADS) + rng.choice(catalog.BRAND_TAILS)
    n_attrs = min(len(category.attributes), rng.choice((5, 5, 6)))
    keep = sorted(rng.sample(range(len(category.attributes)), n_attrs))
    attributes = tuple((category.attributes[i].name, rng.choice(category.attributes[i].values)) for i in keep)
    return Product(pid=pid, category=category.name, brand=brand, model=rng.choice(catalog.MODEL_NAMES),
                   noun=rng.choice(category.nouns), attributes=attributes, use=rng.choice(category.uses))


def format_prompt(product: Product, descriptions: list[str], instruction_index: int) -> str:
    """Facts then the requirements block; each IFEval description on one line (its internal newlines folded)."""
    lines = [INSTRUCTIONS[instruction_index % len(INSTRUCTIONS)], *product.fact_lines(), REQUIREMENTS_HEADER]
    lines += [" ".join(d.split()) for d in descriptions]
    return "\n".join(lines)
