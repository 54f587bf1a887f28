"""What every CLI face shares: printing a result, and turning the errors a user can fix into one line
(``error: ...``) and exit status 2, without a traceback."""
from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from privmed.errors import PrivmedError


def print_result(obj, as_json: bool, text: str | None = None) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json or text is None else text)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command ``args.fn``; its exit status, or 2 for an error the user can fix."""
    try:
        return int(args.fn(args) or 0)
    except PrivmedError as e:
        print(f"error: {e}", file=sys.stderr)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        print(f"error: invalid setting: {msgs}", file=sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; a resumable checkpoint is kept beside the output", file=sys.stderr)
        return 130
    return 2
