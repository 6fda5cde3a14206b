from .. import cli
from .command import main

if __name__ == "__main__":
    cli.run_tool(main, "python -m focal_det.stability")
