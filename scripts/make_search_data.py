"""Writes the search env's small fictional corpus and multi-hop questions
(turnrl/envs/data/search_*.jsonl). Fictional, so a model cannot answer from memory."""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "turnrl" / "envs" / "data"
rng = random.Random(7)
people = ["Marela Quint", "Tobin Asher", "Ilse Varga", "Oren Pell", "Sabine Kord", "Yaro Fenn", "Lucia Dramm",
          "Petr Halvo", "Nadia Orst", "Emil Brask", "Runa Vell", "Caspar Idle"]
jobs = ["painter", "engineer", "cellist", "botanist", "architect", "chemist", "novelist", "surveyor", "glassblower",
        "cartographer", "baker", "astronomer"]
towns = ["Ossbrook", "Kettleby", "Marrowfield", "Dunhollow", "Saltmere", "Brackwater", "Fennick", "Gorlan",
         "Haverlin", "Ilmsted", "Jorvale", "Quillan"]
rivers = ["Tallow", "Seren", "Waddle", "Orrin", "Bexley", "Cray"]
provinces = ["Vendmark", "Ostria", "Calder", "Nimbreth"]
companies = ["Halcyon Works", "Brightforge", "Meridian Looms", "Ostrander Glass", "Pellucid Labs", "Corvid Freight"]
founders = ["Agnes Morrow", "Viktor Lund", "Hedda Crane", "Tomas Reyl", "Ines Salk", "Bram Oakes"]
products = ["copper kettles", "weather balloons", "wool carpets", "stained glass", "lab reagents", "river barges"]

docs, questions = [], []
town_of = {}
for i, t in enumerate(towns):
    r, v = rivers[i % len(rivers)], provinces[(i * 3) % len(provinces)]
    town_of[t] = (r, v)
    docs.append({"id": f"town-{t}", "title": t, "text": f"{t} is a town on the river {r}, in the province of {v}. "
                 f"It is known for its {rng.choice(['market', 'bridges', 'mills', 'harbour', 'festival'])}."})
for r in rivers:
    docs.append({"id": f"river-{r}", "title": f"River {r}", "text": f"The river {r} rises in the "
                 f"{rng.choice(['northern', 'eastern', 'western'])} hills and is {rng.randint(40, 400)} km long."})
for c, f, p in zip(companies, founders, products):
    docs.append({"id": f"company-{c}", "title": c, "text": f"{c} is a company founded by {f}. It makes {p}."})
    docs.append({"id": f"person-{f}", "title": f, "text": f"{f} is an entrepreneur who founded {c}."})
for i, (p, job, t) in enumerate(zip(people, jobs, towns[::-1])):
    c = companies[i % len(companies)]
    docs.append({"id": f"person-{p}", "title": p, "text": f"{p} is a {job} born in the town of {t}. {p} works for {c}."})
    r, v = town_of[t]
    f = founders[companies.index(c)]
    questions += [
        {"id": f"q-river-{i}", "question": f"On which river lies the town where {p} was born?", "answer": r},
        {"id": f"q-province-{i}", "question": f"In which province was {p} born?", "answer": v},
        {"id": f"q-founder-{i}", "question": f"Who founded the company that {p} works for?", "answer": f},
    ]
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "search_corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
(OUT / "search_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
print(len(docs), "documents,", len(questions), "questions")
