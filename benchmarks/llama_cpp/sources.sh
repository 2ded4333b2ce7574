# Sourced by benchmarks/check_llama_cpp.sh and benchmarks/bench_llama_cpp.sh: the
# llama.cpp sources both build from, vendored in the llama-cpp-python sdist.
#
# llama_cpp_sources: needs WORK (absolute; the current directory), LLCPP_PY_VERSION,
# PY (a python with pip), NICE (a command prefix, may be empty) and a log function.
# Downloads the sdist into WORK and extracts it, each only when missing. Sets SRC
# (the llama.cpp tree), LLCPP_COMMIT (llama.cpp@<hash> from the sdist's changelog)
# and GGML_VERSION.
# shellcheck shell=bash

llama_cpp_sources() {
    local sdist="llama_cpp_python-$LLCPP_PY_VERSION.tar.gz"
    SRC="$WORK/llama_cpp_python-$LLCPP_PY_VERSION/vendor/llama.cpp"
    if [ ! -f "$WORK/$sdist" ]; then
        log "downloading llama-cpp-python==$LLCPP_PY_VERSION sdist"
        $NICE "$PY" -m pip download "llama-cpp-python==$LLCPP_PY_VERSION" --no-deps \
            --no-binary llama-cpp-python -d "$WORK" -q
    fi
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        log "extracting $sdist"
        (cd "$WORK" && $NICE tar xzf "$sdist")
    fi
    LLCPP_COMMIT="$(grep -m1 -o 'llama.cpp@[0-9a-f]*' \
        "$WORK/llama_cpp_python-$LLCPP_PY_VERSION/CHANGELOG.md" || echo 'llama.cpp@unknown')"
    GGML_VERSION="$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' \
        "$SRC/ggml/CMakeLists.txt" | paste -sd.)"
    log "llama.cpp: $LLCPP_COMMIT (vendored by llama-cpp-python $LLCPP_PY_VERSION), ggml $GGML_VERSION"
}
