"""`python -m docker_local up|down|build` (what `make docker-up` and `make docker-down` call)."""

from __future__ import annotations

import argparse
import logging
import sys

from docker_local.deploy import Deployment
from docker_local.engine import EngineUnavailableError


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit 1 with the reason when Docker cannot do it."""
    parser = argparse.ArgumentParser(prog="python -m docker_local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build what is missing, start everything, wait until healthy")
    up.add_argument("--inference", type=int, default=2, metavar="N", help="inference consumers (default 2)")
    down = commands.add_parser("down", help="remove the containers and the network (volumes kept)")
    down.add_argument("--volumes", action="store_true", help="also delete the broker's data and the results")
    commands.add_parser("build", help="make the base, broker and service images, start nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"
    )
    deployment = Deployment()
    try:
        if args.command == "up":
            deployment.inference_replicas = args.inference
            deployment.up()
            print(
                f"\nThe system runs in Docker (compose project {deployment.project}):\n"
                f"  upload page and API  {deployment.api_url}/   (API docs {deployment.api_url}/docs)\n"
                f"  results and SSE      {deployment.sink_url}/\n"
                f"  Kafka from the host  {deployment.bootstrap_servers}\n"
                f"  logs                 docker compose logs -f   (stop: make docker-down)"
            )
        elif args.command == "down":
            deployment.down(volumes=args.volumes)
        else:
            deployment.build()
    except EngineUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
