# Shared by the counter CGIs. The counter lives in sector 1 of /dev/vda as
# "counter=N\n" padded with zeros; every access is O_DIRECT, and a write is
# flushed (fsync) before it is acknowledged, so it reaches the
# (replicated) disk synchronously and never sits in the guest's page cache.
DISK=/dev/vda
read_counter() {
  v=$(dd if=$DISK bs=512 skip=1 count=1 iflag=direct 2>/dev/null | tr -d '\000' | sed -n 's/^counter=\([0-9][0-9]*\)$/\1/p')
  echo "${v:-0}"
}
write_counter() {
  printf 'counter=%d\n' "$1" | dd of=$DISK bs=512 seek=1 count=1 conv=sync,notrunc,fsync oflag=direct 2>/dev/null
}
# One request at a time: mkdir is atomic.
lock() { while ! mkdir /tmp/counter.lock 2>/dev/null; do usleep 2000; done; }
unlock() { rmdir /tmp/counter.lock; }
