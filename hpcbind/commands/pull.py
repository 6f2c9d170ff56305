"""``hpcrun pull [--force] [--no-https] [--arch ARCH] [--dir DIR] [OUT.sif] SOURCE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcbind.errors import HpcbindError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-F", "--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--dir", type=Path, help="write the image in DIR")
    configure_fetch(parser)
    parser.add_argument("out", metavar="OUT.sif", nargs="?", type=Path,
                        help="the image to write (default: NAME_TAG.sif, as Apptainer)")
    parser.add_argument("source", metavar="SOURCE",
                        help="docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST], oci:DIR[:TAG], "
                             "oci-archive:FILE[:TAG] or docker-archive:FILE")


def configure_fetch(parser: argparse.ArgumentParser) -> None:
    """The options of every command that fetches an image (pull, build)."""
    parser.add_argument("--arch", default="", metavar="ARCH[/VARIANT]",
                        help="the platform to take from a multi-architecture image "
                             "(Go names: amd64, arm64, arm/v7; default: this host's)")
    parser.add_argument("--no-https", action="store_true",
                        help="talk plain HTTP (or unverified TLS) to the registry")
    parser.add_argument("--docker-login", action="store_true",
                        help="ask for the registry's username and password")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing but errors (the default when not on a terminal)")


def fetch_options(args: argparse.Namespace):
    from hpcbind.image.oci import FetchOptions, credentials_from_environment

    username, password = credentials_from_environment()
    if args.docker_login:
        import getpass

        try:
            username = input("Username: ") if sys.stdin.isatty() else sys.stdin.readline()
            password = getpass.getpass("Password: ")
        except EOFError:
            raise HpcbindError("--docker-login: no username or password given",
                               "type them when asked, or set $APPTAINER_DOCKER_USERNAME "
                               "and $APPTAINER_DOCKER_PASSWORD") from None
        username = username.strip()
    return FetchOptions(arch=args.arch, no_https=args.no_https, username=username,
                        password=password, quiet=args.quiet or not sys.stderr.isatty())


def run(args: argparse.Namespace) -> int:
    from hpcbind.image import oci
    from hpcbind.image.build import SilentProgress, build, console_progress

    reference = oci.parse(args.source)
    if reference is None:
        raise HpcbindError(f"{args.source!r} is not an image reference",
                           f"pull one of {', '.join(t + ':' for t in oci.TRANSPORTS)}...; "
                           "build local images with 'hpcrun build'")
    out = args.out or Path(reference.sif_name())
    if args.dir is not None:
        out = args.dir / out
    options = fetch_options(args)
    if options.quiet:
        build(out, args.source, force=args.force, fetch=options, progress=SilentProgress())
        return 0
    with console_progress() as progress:
        build(out, args.source, force=args.force, fetch=options, progress=progress)
    return 0
