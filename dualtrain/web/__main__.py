"""`python -m dualtrain.web RUN_DIR [--port N] [--host 127.0.0.1]`: see `dualtrain.web`."""

from dualtrain.web import main

main()
