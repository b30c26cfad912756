#!/usr/bin/env python3
"""Cross-check ops/calendars/<year>.toml against the PyPI package chinesecalendar, day by day.

Usage: pip install chinesecalendar==1.11.0 && python3 ops/calendars/crosscheck.py
Exits non-zero and names every day on which the two disagree. Not run by CI: the package is a
reference for people editing the data, not a dependency of the engine.
"""
import datetime
import pathlib
import sys
import tomllib

import chinese_calendar

here = pathlib.Path(__file__).parent
off, on, years = set(), set(), []
for path in sorted(here.glob("[0-9][0-9][0-9][0-9].toml")):
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    years.append(data["year"])
    off.update(h["date"] for h in data.get("holidays", []))
    on.update(w["date"] for w in data.get("workdays", []))

bad = 0
for year in years:
    day = datetime.date(year, 1, 1)
    while day.year == year:
        ours = day in on or (day.weekday() < 5 and day not in off)
        theirs = chinese_calendar.is_workday(day)
        if ours != theirs:
            print(f"{day}: ours={ours} chinesecalendar={theirs}")
            bad += 1
        day += datetime.timedelta(days=1)
print(f"checked {len(years)} years ({years[0]}-{years[-1]}): {bad} disagreements")
sys.exit(1 if bad else 0)
