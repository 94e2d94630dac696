"""Synthetic news corpora the project writes itself (no third-party prose).

Each article is a templated event (sport, business, politics, science, weather, crime) with random
people, places, organisations and numbers. Two domains mirror the real datasets:

* ``short`` (XSUM-like): the ``human`` reference is one sentence;
* ``highlights`` (CNN/DailyMail-like): the ``human`` reference is 3-4 highlight lines.

A cheap non-model source, ``lead``, is the article's opening sentence (``short``) or its first three
sentences as lines (``highlights``). Everything is deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from selfrec_ft.data.corpus import Article, Corpus
from selfrec_ft.errors import UserError

from selfrec_ft.defaults import GENERATION_DOMAINS as DOMAINS  # noqa: E402

FIRST = ["Alice", "Omar", "Priya", "Tomas", "Mei", "Kwame", "Sofia", "Lars", "Nadia", "Diego", "Hana",
         "Felix", "Amara", "Ivan", "Chloe", "Ravi", "Elena", "Jonah", "Leila", "Marco", "Yuki", "Bram"]
LAST = ["Hartley", "Okafor", "Lindqvist", "Moreau", "Castillo", "Nakamura", "Brennan", "Adeyemi",
        "Kowalski", "Farrow", "Delgado", "Whitmore", "Petrov", "Sato", "Gallagher", "Osei", "Novak"]
TOWNS = ["Ashford", "Kelderby", "Port Maren", "Stonebridge", "Wexham", "Lowmoor", "Brackton", "Elmsworth",
         "Harrowgate", "Dunmere", "Caldwick", "Fenbury", "Riverton", "Oakhaven", "Millbrook"]
COMPANIES = ["Norvale Energy", "Brightline Foods", "Castor Motors", "Helix Telecom", "Redwood Bank",
             "Silverpine Air", "Quarry Steel", "Luma Pharmaceuticals", "Harbor Freight Lines", "Vantor Media"]
TEAMS = ["Kelderby Rovers", "Ashford United", "Port Maren Athletic", "Wexham City", "Lowmoor Town",
         "Stonebridge Wanderers", "Dunmere Albion", "Caldwick Rangers"]
AGENCIES = ["the transport department", "the regional council", "the health authority", "the environment agency",
            "the education board", "the housing ministry"]
ROLES = ["chief executive", "spokesperson", "minister", "manager", "researcher", "council leader", "coach"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@dataclass
class _Event:
    lead: str
    details: list[str]
    summary: str
    highlights: list[str]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _sport(rng: random.Random) -> _Event:
    home, away = rng.sample(TEAMS, 2)
    hg, ag = rng.randint(2, 5), rng.randint(0, 1)
    scorer, coach = _person(rng), _person(rng)
    day, minute, crowd = rng.choice(WEEKDAYS), rng.randint(50, 89), rng.randint(4, 40) * 1000
    pos = rng.randint(1, 6)
    return _Event(
        lead=f"{home} beat {away} {hg}-{ag} on {day}, with {scorer} scoring the decisive goal in the {minute}th minute.",
        details=[
            f"A crowd of {crowd:,} watched the match in {home.split()[0]}.",
            f'"We showed real character today," said {home} coach {coach}.',
            f"The result lifts {home} to number {pos} in the league table.",
            f"{away} had not lost at this stage of the season for {rng.randint(3, 12)} matches.",
            f"{scorer} has now scored {rng.randint(5, 19)} goals this season.",
        ],
        summary=f"{scorer} struck late as {home} won {hg}-{ag} against {away} to climb to number {pos} in the league.",
        highlights=[f"{home} beat {away} {hg}-{ag} on {day}", f"{scorer} scored the winner in the {minute}th minute",
                    f"{crowd:,} fans attended the match", f"{home} rise to number {pos} in the table"],
    )


def _business(rng: random.Random) -> _Event:
    company, boss = rng.choice(COMPANIES), _person(rng)
    jobs, pct = rng.randint(2, 40) * 50, rng.randint(3, 29)
    town, year = rng.choice(TOWNS), rng.randint(2019, 2025)
    profit = rng.randint(12, 480)
    cut = rng.random() < 0.5
    verb = "cut" if cut else "create"
    return _Event(
        lead=f"{company} will {verb} {jobs} jobs at its site in {town}, the firm has announced.",
        details=[
            f"The company said its profits had {'fallen' if cut else 'risen'} by {pct}% to {profit} million pounds in {year}.",
            f'{"Chief executive"} {boss} said the decision was "{"painful but necessary" if cut else "a vote of confidence in the region"}".',
            f"Unions in {town} said they would {'fight the plans' if cut else 'welcome the investment'}.",
            f"The site has operated since {year - rng.randint(10, 60)} and employs about {jobs * rng.randint(2, 6)} people.",
            f"Shares in {company} {'dropped' if cut else 'rose'} {rng.randint(1, 9)}% after the announcement.",
        ],
        summary=f"{company} plans to {verb} {jobs} jobs in {town} after profits {'fell' if cut else 'rose'} by {pct}%.",
        highlights=[f"{company} to {verb} {jobs} jobs in {town}", f"Profits {'fell' if cut else 'rose'} {pct}% to {profit} million pounds",
                    f"Chief executive {boss} defends the decision", f"Unions {'vow to fight' if cut else 'welcome'} the plans"],
    )


def _politics(rng: random.Random) -> _Event:
    agency, minister, critic = rng.choice(AGENCIES), _person(rng), _person(rng)
    amount, town = rng.randint(5, 900), rng.choice(TOWNS)
    years = rng.randint(2, 10)
    thing = rng.choice(["new homes", "school repairs", "rail upgrades", "flood defences", "hospital beds"])
    return _Event(
        lead=f"A {amount} million pound plan for {thing} in {town} has been approved by {agency}.",
        details=[
            f"Minister {minister} said the money would be spent over {years} years.",
            f'Opposition member {critic} called the plan "too little, too late".',
            f"Residents of {town} have campaigned for {thing} for more than {rng.randint(2, 15)} years.",
            f"Work is expected to begin on {rng.choice(WEEKDAYS)} next month.",
            f"Officials estimate that {rng.randint(2, 90) * 100} people will benefit.",
        ],
        summary=f"{town} will get {amount} million pounds for {thing} over {years} years under a plan approved by {agency}.",
        highlights=[f"{amount} million pounds approved for {thing} in {town}", f"Spending will run over {years} years",
                    f"Minister {minister} backs the plan", f"Critic {critic} says it is too little, too late"],
    )


def _science(rng: random.Random) -> _Event:
    lead_sci, town = _person(rng), rng.choice(TOWNS)
    n, pct = rng.randint(120, 9000), rng.randint(8, 64)
    topic = rng.choice(["sleep", "coffee", "walking", "air pollution", "screen time", "diet"])
    outcome = rng.choice(["heart disease", "memory loss", "asthma", "depression", "diabetes"])
    direction = rng.choice(["lower", "higher"])
    return _Event(
        lead=f"Researchers at the University of {town} say {topic} is linked to a {pct}% {direction} risk of {outcome}.",
        details=[
            f"The study followed {n:,} adults for {rng.randint(2, 20)} years.",
            f'Lead author {lead_sci} said "more work is needed before advice changes".',
            f"The findings were published in a medical journal on {rng.choice(WEEKDAYS)}.",
            f"Independent experts said the sample was {'large' if n > 3000 else 'small'} but the results were plausible.",
            f"The team now plans a trial involving {rng.randint(2, 30) * 100} volunteers.",
        ],
        summary=f"A study of {n:,} adults in {town} links {topic} to a {pct}% {direction} risk of {outcome}.",
        highlights=[f"Study of {n:,} adults links {topic} to {outcome}", f"Risk was {pct}% {direction} in the study",
                    f"Lead author {lead_sci} urges caution", "A larger trial is planned"],
    )


def _weather(rng: random.Random) -> _Event:
    town, officer = rng.choice(TOWNS), _person(rng)
    homes, mm = rng.randint(20, 900), rng.randint(30, 160)
    kind = rng.choice(["flooding", "storm damage", "snow", "high winds"])
    return _Event(
        lead=f"About {homes} homes in {town} were left without power after {kind} hit the area overnight.",
        details=[
            f"Forecasters recorded {mm}mm of rain in {rng.randint(6, 48)} hours.",
            f"Emergency officer {officer} urged people to avoid travelling.",
            f"{rng.randint(2, 30)} roads were closed and several schools stayed shut on {rng.choice(WEEKDAYS)}.",
            f"Engineers expect to restore supplies within {rng.randint(2, 4)} days.",
            "A weather warning remains in place for the rest of the week.",
        ],
        summary=f"{kind.capitalize()} left about {homes} homes in {town} without power after {mm}mm of rain fell.",
        highlights=[f"{homes} homes in {town} lost power", f"{mm}mm of rain fell as {kind} hit",
                    f"Officer {officer} urges people not to travel", "Warning stays in place all week"],
    )


def _crime(rng: random.Random) -> _Event:
    town, accused, judge = rng.choice(TOWNS), _person(rng), _person(rng)
    years, amount = rng.randint(2, 14), rng.randint(20, 950)
    crime = rng.choice(["fraud", "burglary", "theft", "money laundering"])
    return _Event(
        lead=f"A {rng.randint(22, 67)}-year-old man from {town} has been jailed for {years} years for {crime}.",
        details=[
            f"{accused} admitted taking {amount},000 pounds over {rng.randint(2, 9)} years.",
            f'Judge {judge} told the court the offences were "calculated and cruel".',
            f"Police in {town} said the sentence should send a clear message.",
            f"Victims said they had lost savings meant for retirement.",
            f"A hearing to recover the money will take place in {rng.randint(2, 11)} months.",
        ],
        summary=f"{accused} from {town} was jailed for {years} years for {crime} involving {amount},000 pounds.",
        highlights=[f"{accused} jailed for {years} years for {crime}", f"He took {amount},000 pounds",
                    f"Judge {judge} calls the offences calculated", "Police say the case sends a clear message"],
    )


_TOPICS = [_sport, _business, _politics, _science, _weather, _crime]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"])", text.strip()) if s]


def synth_corpus(domain: str, n: int, seed: int = 0, id_prefix: str | None = None) -> Corpus:
    """A synthetic corpus of ``n`` articles with ``human`` and ``lead`` summaries."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"the number of articles must be at least 1, got {n}")
    rng = random.Random(f"{domain}-{seed}")
    prefix = id_prefix if id_prefix is not None else f"{domain}-{seed}-"
    articles, human, lead = [], {}, {}
    for i in range(n):
        ev = rng.choice(_TOPICS)(rng)
        details = ev.details[:]
        rng.shuffle(details)
        details = details[: rng.randint(3, len(details))]
        body = " ".join([ev.lead, *details])
        aid = f"{prefix}{i:05d}"
        articles.append(Article(aid, body))
        sents = _sentences(body)
        if domain == "short":
            human[aid] = ev.summary
            lead[aid] = sents[0]
        else:
            human[aid] = "\n".join(ev.highlights[: rng.randint(3, 4)])
            lead[aid] = "\n".join(s.rstrip(".") for s in sents[:3])
    return Corpus(articles=articles, summaries={"human": human, "lead": lead})
