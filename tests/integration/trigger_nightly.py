"""Trigger the deployed nightly flow through the Prefect API, as its schedule would: no
sources given, so it drains the landing zone its worker's settings name. Two nights.

Run by test_prefect_deployment.py in its own process, so PREFECT_API_URL points this client
at the test's server. Prints ``key=value`` lines the test reads.
"""

from __future__ import annotations

import asyncio
import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment


async def main(nights: int) -> None:
    parameters = {"params": {"train": False}}  # sources: the landing zone in the settings
    runs = []
    for night in range(1, nights + 1):
        runs.append(await run_deployment("nightly/nightly", parameters=parameters, timeout=540))
        print(f"state_{night}={runs[-1].state.type.value}")
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("nightly/nightly")
        schedule = deployment.schedules[0].schedule
        for night, run in enumerate(runs, start=1):
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            print(f"artifacts_{night}={','.join(sorted(a.key for a in artifacts if a.key))}")
    print(f"cron={schedule.cron}")
    print(f"timezone={schedule.timezone}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
