"""Simulated annotators: answer a Label Studio project's open tasks from ground-truth labels.

Each annotator is a real Label Studio user (signed up through the organisation's invite
link, so it annotates with its own token) who gives the true label, or with probability
``--noise`` a different class. Ground truth is a CSV of ``image_id,label``, or, with
``--fashion-mnist``, the Fashion-MNIST labels of lake images whose source is a
``<part>-<index>.png`` file written by ``visionloop fashion-mnist`` or the shipped sample.

    .venv/bin/python scripts/simulate_annotators.py --project visionloop-classifier \\
        --fashion-mnist --annotators 2 --noise 0.1 [--limit 100] [--config settings.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import httpx
import numpy as np

from visionloop.ingest.samples import CLASS_NAMES, load_part
from visionloop.labelling.client import LabelStudio, choice_result
from visionloop.labelling.server import local_url, token
from visionloop.lake.snapshot import take
from visionloop.settings import Settings, load_settings

SOURCE = re.compile(r"(train|test)-(\d+)\.png$")
PASSWORD = "simulated-annotator"


def fashion_mnist_truth(settings: Settings) -> dict[str, str]:
    """Ground truth of lake images that came from Fashion-MNIST files, by image id."""
    labels = {part: load_part(part)[1] for part in ("train", "test")}
    truth = {}
    for part in take(settings.lake_dir).row_groups(["image_id", "source_uri"]):
        for image_id, uri in zip(
            part.table["image_id"].to_pylist(), part.table["source_uri"].to_pylist(), strict=True
        ):
            match = SOURCE.search(uri or "")
            if match:
                truth[image_id] = CLASS_NAMES[int(labels[match[1]][int(match[2])])]
    return truth


def annotator_token(url: str, admin_token: str, email: str) -> str:
    """Sign ``email`` up through the invite link (or log in if it exists); its API token."""
    headers = {"Authorization": f"Token {admin_token}"}
    invite = httpx.get(f"{url}/api/invite", headers=headers).raise_for_status().json()["token"]
    with httpx.Client(base_url=url) as session:
        session.get("/user/signup/")
        form = {"email": email, "password": PASSWORD}
        signed_up = session.post(
            f"/user/signup/?token={invite}",
            data=form | {"csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": f"{url}/user/signup/"},
        )
        if signed_up.status_code != 302:  # already a user: log in instead
            session.get("/user/login/")
            session.post(
                "/user/login/",
                data=form | {"csrfmiddlewaretoken": session.cookies["csrftoken"]},
                headers={"Referer": f"{url}/user/login/"},
            )
        return session.get("/api/current-user/token").raise_for_status().json()["token"]


def answer(
    studio_url: str,
    tokens: list[str],
    project: int,
    truth: dict[str, str],
    classes: list[str],
    noise: float,
    limit: int | None,
    seed: int,
) -> dict[str, int]:
    """Every annotator answers every open task (up to ``limit`` tasks) it has not answered."""
    rng = np.random.default_rng(seed)
    clients = [LabelStudio(studio_url, key) for key in tokens]
    done = {"tasks": 0, "annotations": 0, "noisy": 0, "no truth": 0}
    open_ids = clients[0].open_tasks(project)
    for task in clients[0].sdk.tasks.list(project=project, fields="all", page_size=200):
        image_id = task.data["image_id"]
        if image_id not in open_ids:
            continue
        if limit is not None and done["tasks"] >= limit:
            break
        if image_id not in truth:
            done["no truth"] += 1
            continue
        done["tasks"] += 1
        for client in clients:
            label = truth[image_id]
            if rng.random() < noise:
                label = str(rng.choice([name for name in classes if name != label]))
                done["noisy"] += 1
            client.sdk.annotations.create(id=task.id, result=choice_result(label))
            done["annotations"] += 1
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="project title (the registered model)")
    parser.add_argument("--truth", type=Path, help="CSV of image_id,label")
    parser.add_argument("--fashion-mnist", action="store_true", help="truth from the lake")
    parser.add_argument("--annotators", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    url = settings.labelling.url or local_url(settings)
    if args.truth:
        with args.truth.open() as stream:
            truth = {row["image_id"]: row["label"] for row in csv.DictReader(stream)}
    elif args.fashion_mnist:
        truth = fashion_mnist_truth(settings)
    else:
        parser.error("give --truth FILE or --fashion-mnist")
    admin = LabelStudio(url, token(settings))
    project = admin.find_project(args.project)
    if project is None:
        print(f"no project {args.project!r} at {url}", file=sys.stderr)
        return 2
    config = admin.sdk.projects.get(id=project).parsed_label_config
    classes = list(config["label"]["labels"])
    emails = [f"annotator{number}@visionloop.local" for number in range(1, args.annotators + 1)]
    tokens = [annotator_token(url, token(settings), email) for email in emails]
    done = answer(url, tokens, project, truth, classes, args.noise, args.limit, args.seed)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
