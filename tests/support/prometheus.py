"""Read `GET /metrics` with prometheus_client's own parser, as a scraper would."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass
class Scrape:
    text: str
    families: dict[str, str]  # family name → type
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels (0 when absent, as Prometheus reads it)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and s.labels == labels for s in self.samples)

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}

    def minus(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)


def parse(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples.extend(family.samples)
    return Scrape(text, families, samples)


def scrape(base_url: str, *, accept: str | None = None) -> Scrape:
    headers = {"accept": accept} if accept else {}
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.text)
