# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
RUN := source scripts/env.sh &&

.PHONY: setup demo test test-fast reliability-table bench ray-up ray-down spark-up spark-down airflow clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) bash scripts/demo.sh

test: setup
	@$(RUN) python -m pytest -q -p no:cacheprovider --durations=25 --junitxml=build/junit.xml $(PYTEST_ARGS)
	@$(RUN) python scripts/module_times.py build/junit.xml

# The reliability table of the last `make test` (written under build/), as the tracked copy.
reliability-table:
	cp build/reliability_cases.json bench/results/reliability_cases.json

bench: setup
	@$(RUN) bash scripts/bench.sh

ray-up: setup
	@$(RUN) bash scripts/ray_local.sh up

ray-down:
	@$(RUN) bash scripts/ray_local.sh down

spark-up: setup
	@$(RUN) bash scripts/spark_local.sh up

spark-down:
	@$(RUN) bash scripts/spark_local.sh down

airflow: setup
	@$(RUN) bash scripts/airflow_standalone.sh

clean:
	rm -rf data .airflow bench/results/*.json
