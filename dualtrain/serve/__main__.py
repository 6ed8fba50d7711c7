"""`python -m dualtrain.serve RUN_DIR ...`: see dualtrain/serve/__init__.py and docs/serving.md."""

from dualtrain.serve import main

if __name__ == "__main__":
    main()
