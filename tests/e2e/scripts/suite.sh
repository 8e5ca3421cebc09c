# A tour of the shell and its applets; its output must match a native run byte for byte.
echo "== pipelines"
seq 1 20 | grep 1 | sort -r | head -3 | tr '\n' ' '; echo
printf 'b\na\nc\na\n' | sort | uniq -c | awk '{print $2 ":" $1}'
echo "== subshells and substitution"
x=$(echo outer; (echo inner | tr a-z A-Z))
echo "$x" | wc -l
( cd /tmp && pwd )
echo "== here-document"
cat <<END | sed 's/world/there/'
hello world
line two
END
sleep 0.3 | cat
echo "== loops and arithmetic"
i=0; while [ $i -lt 5 ]; do i=$((i+1)); done; echo "i=$i"
for w in alpha beta gamma; do printf '%s ' "$w"; done; echo
sleep 0.3
echo "== files"
mkdir -p d/e; echo one > d/a.txt; echo two > d/e/b.txt
find d -type f | sort
find d -name '*.txt' | xargs cat | sort
ls d | sort
mkfifo fifo; ( echo through the fifo > fifo ) & cat fifo; wait; ls -l fifo | cut -c1
cut -d: -f1 <<X
root:x:0
X
sleep 0.3
echo "== archives and digests"
tar cf d.tar d && rm -rf d && tar xf d.tar && cat d/e/b.txt
gzip -c d/a.txt > a.gz && gunzip -c a.gz
echo abc | md5sum
echo abc | sha256sum
echo "== traps and signals"
trap 'echo caught USR1' USR1
kill -USR1 $$
sleep 0.1
echo "== background jobs"
( sleep 0.6; echo late ) &
( echo early ) &
wait
sleep 0.05 &
pid=$!
wait $pid; echo "waited $?"
# The shell reports "Terminated" only if `wait` is what reaps the job, which is a race with
# the job's death (natively too): the report goes to /dev/null, the status is checked.
( sleep 5 ) & kill $! ; wait $! 2>/dev/null || echo "killed status $?"
sleep 0.3
echo "== /dev/stdin, /dev/fd"
echo "a pipe reopened as /dev/stdin" | cat /dev/stdin
echo "and as /dev/fd/0" | cat /dev/fd/0
echo "== exit codes"
false || echo "false failed"
sh -c 'exit 7'; echo "sub exit $?" || true
echo done
