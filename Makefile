# One entry point for the formula's tasks; each target is a script in scripts/.
.PHONY: demo demo-down test test-unit test-functional test-integration lint bootstrap lab-clean bench

demo:              ## bring the demo pair lab up and show what it reports
	./scripts/demo
demo-down:         ## tear the demo pair lab down
	./scripts/demo down
test:              ## every tier (lint, unit, functional, integration, kernel, bench) + leftover check
	./scripts/test
test-unit:         ## the fast tier: unit tests only
	./scripts/test unit
test-functional:
	./scripts/test functional
test-integration:
	./scripts/test integration
lint:
	./scripts/bootstrap && ./scripts/lint
bootstrap:         ## Debian packages, .venv and the test guest (idempotent)
	./scripts/bootstrap && tests/guest/build
lab-clean:         ## remove whatever a killed run left of the lab
	.venv/bin/python -m tests.lab clean
bench:             ## benchmarks, full length (print their figures)
	./scripts/bootstrap && .venv/bin/python -m bench
