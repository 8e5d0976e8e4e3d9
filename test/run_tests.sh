#!/bin/sh
# Runs each test binary given as an argument, sums the "N passed, N failed" line
# each one prints last, and prints the total as the very last line.
# Exit status is non-zero if any check failed or any binary crashed. TEST_WRAPPER, when set,
# prefixes each test's command (make test-gpu-memcheck: compute-sanitizer).
passed=0; failed=0
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}   # spinning threads crawl on a loaded 2-core machine
for t in "$@"; do
    echo "== $t"
    out=$($TEST_WRAPPER ./$t 2>&1); rc=$?
    echo "$out"
    line=$(echo "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
    f=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
    if [ -z "$line" ]; then p=0; f=0; fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$t exited with status $rc"; f=1
    fi
    passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
