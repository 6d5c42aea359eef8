"""`python -m trl_ib.cli`: the `ib-ft` command line (for `accelerate launch -m trl_ib.cli ...`)."""

from trl_ib.cli import main

main()
