# tern — the two commands:
#   make demo   set up (Debian packages), build, and run the demo
#   make test   set up, build, and run the whole test suite
# Others: make build | bench | sanitize | format | clean
.PHONY: setup build release demo test bench sanitize format clean

PRESET ?= dev

setup:
	@scripts/setup.sh --quiet

build: setup
	@test -f build/$(PRESET)/build.ninja || cmake --preset $(PRESET) >/dev/null
	cmake --build --preset $(PRESET)

release: setup
	@test -f build/release/build.ninja || cmake --preset release >/dev/null
	cmake --build --preset release

demo: release
	scripts/demo.sh build/release

test: build
	ctest --preset $(PRESET)

bench: release
	bench/run.sh build/release

# ASan+UBSan and TSan over the unit tests, plus the clang -Wthread-safety build.
sanitize: setup
	cmake --preset asan >/dev/null && cmake --build --preset asan && ctest --preset asan
	cmake --preset tsan >/dev/null && cmake --build --preset tsan && ctest --preset tsan
	cmake --preset clang >/dev/null && cmake --build --preset clang

format:
	git ls-files '*.h' '*.cc' '*.c' | xargs clang-format -i

clean:
	rm -rf build
