"""Human review in the browser: `prefdata review REF` and `prefdata review commit REF`.

The vote already knows which pairs it is unsure of (label_prob near 0.5, families that disagree);
people settle those first. Every keypress is one SQLite transaction under the store, so a killed
server loses nothing, and `review commit` turns the decisions into a new, ordinary version.

Modules: rank (queue order), db (decisions log), pages (HTML), app (Starlette + security),
agreement (kappas), commit (new version), cli (the Typer command).
"""
