//! Where log lines go: a bounded buffer that one thread writes to stdout in batches.
//!
//! A request never waits on a write syscall: logging a line appends it to the logging thread's
//! own buffer (a copy under a mutex only that thread and the writer take). A dedicated thread
//! takes every thread's buffer at once, writes them with one call, then lets lines gather for
//! [`BATCH_INTERVAL`] before taking the next batch, so under load stdout sees about a thousand
//! writes a second however many lines there are. When every buffer is empty the thread sleeps
//! until the next line arrives (no CPU while idle), so a line logged at rest is out at once.
//!
//! One buffer per thread, not one for all: with one, every line moved the buffer's end and its
//! mutex between the cores of the threads that log (about 1 µs a line in the HTTP benchmark).
//! Each thread's lines keep their order; lines of different threads are written thread by
//! thread within a batch (a millisecond), each with its own timestamp.
//!
//! Nothing is ever dropped: when stdout cannot keep up and [`MAX_BUFFERED`] bytes of one
//! thread's lines are waiting, that thread waits for the writer (backpressure) instead of
//! losing the line. Dropping
//! the [`WriterGuard`] writes out what is buffered and stops the thread (waiting at most
//! [`FLUSH_TIMEOUT`] for a stuck stdout); lines logged after the thread has stopped are written
//! directly. A stdout opened non-blocking is waited for, not given up on.
//!
//! `tracing-appender`'s worker, used before, spins between lines (crossbeam's backoff:
//! `pause`, then `sched_yield`): under load that cost about 2.5 µs of CPU per line on a thread
//! that competes with the request workers for the same cores.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer lets lines gather after writing a batch.
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(1);

/// Bytes buffered per thread before a thread that logs waits for the writer.
pub(crate) const MAX_BUFFERED: usize = 4 << 20;

/// How long dropping the guard waits for buffered lines to be written.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    /// Whether the guard was dropped; the writer sleeps on it when nothing is buffered.
    state: Mutex<State>,
    /// Signalled when lines arrive while the writer sleeps, and on close.
    lines: Condvar,
    /// Set by the writer before it sleeps: a thread that logs then wakes it.
    writer_waiting: AtomicBool,
    /// Every thread's buffer, for the writer to collect.
    shards: Mutex<Shards>,
    /// Tells this writer's buffers from another's in a thread's list.
    id: u64,
    max: usize,
    /// [`IDLE_CHECK`], longer in tests that prove a line wakes the writer.
    idle_check: Duration,
}

#[derive(Default)]
struct State {
    /// The guard was dropped: the writer drains what is buffered, then stops.
    closed: bool,
}

#[derive(Default)]
struct Shards {
    list: Vec<Arc<Shard>>,
    /// The writer has stopped: new buffers are born finished.
    finished: bool,
}

/// One thread's lines waiting for the writer.
#[derive(Default)]
struct Shard {
    buf: Mutex<ShardBuf>,
    /// Signalled when the writer has taken this buffer's lines.
    space: Condvar,
}

#[derive(Default)]
struct ShardBuf {
    bytes: Vec<u8>,
    /// The writer has stopped: lines go straight to stdout.
    finished: bool,
    /// Threads waiting for room (only the owner, or a line written at its exit).
    waiting: usize,
}

/// A poisoned lock (a panic while holding it) cannot leave a buffer half-written in a way
/// that matters more than losing logs: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// A new buffer in the writer's list (finished if the writer has stopped).
    fn register(&self) -> Arc<Shard> {
        let mut shards = lock(&self.shards);
        let shard = Arc::new(Shard::default());
        lock(&shard.buf).finished = shards.finished;
        shards.list.push(shard.clone());
        shard
    }

    /// Moves every thread's lines into `batch` (each thread's in order), lets go of buffers
    /// whose thread has ended, and with `finish` marks every buffer finished, under its lock.
    fn collect(&self, batch: &mut Vec<u8>, finish: bool) {
        let mut shards = lock(&self.shards);
        shards.finished |= finish;
        shards.list.retain(|shard| {
            let mut buf = lock(&shard.buf);
            batch.extend_from_slice(&buf.bytes);
            buf.bytes.clear();
            if buf.bytes.capacity() > KEEP_CAPACITY || finish {
                buf.bytes = Vec::new();
            }
            buf.finished |= finish;
            if buf.waiting > 0 {
                shard.space.notify_all();
            }
            // The list's and the thread's: fewer means the thread is gone.
            Arc::strong_count(shard) > 1
        });
    }

    fn anything_buffered(&self) -> bool {
        lock(&self.shards).list.iter().any(|shard| !lock(&shard.buf).bytes.is_empty())
    }
}

/// Hands lines to the writer thread; cheap to clone. Also a `MakeWriter` for the fmt layer.
#[derive(Clone)]
pub(crate) struct LineWriter {
    shared: Arc<Shared>,
}

/// Writes out what is buffered and stops the writer thread when dropped.
pub(crate) struct WriterGuard {
    shared: Arc<Shared>,
    done: std::sync::mpsc::Receiver<()>,
}

thread_local! {
    /// This thread's buffers, one per writer (by writer id).
    static MINE: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

impl LineWriter {
    /// Starts the writer thread on `out`.
    pub(crate) fn new<W: Write + Send + 'static>(out: W) -> io::Result<(Self, WriterGuard)> {
        Self::with_capacity(out, MAX_BUFFERED, IDLE_CHECK)
    }

    fn with_capacity<W: Write + Send + 'static>(
        mut out: W,
        max: usize,
        idle_check: Duration,
    ) -> io::Result<(Self, WriterGuard)> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            lines: Condvar::new(),
            writer_waiting: AtomicBool::new(false),
            shards: Mutex::new(Shards::default()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max,
            idle_check,
        });
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = shared.clone();
        std::thread::Builder::new().name("keel-log-writer".into()).spawn(move || {
            // However the thread ends, loggers stop waiting for it and write directly.
            let _finished = Finished(worker.clone());
            let mut batch = Vec::new();
            loop {
                worker.collect(&mut batch, false);
                if batch.is_empty() {
                    let st = lock(&worker.state);
                    if st.closed {
                        // Drained; what arrived since is taken with every buffer marked
                        // finished under its lock, so no line slips in between: from here on
                        // loggers write directly.
                        drop(st);
                        worker.collect(&mut batch, true);
                        write_batch(&mut out, &batch);
                        break;
                    }
                    // Announced before looking once more, so a line appended after the look
                    // sees the flag and wakes the writer (it takes `state` to do so).
                    worker.writer_waiting.store(true, Ordering::SeqCst);
                    if !worker.anything_buffered() {
                        let _ = worker.lines.wait_timeout(st, worker.idle_check);
                    }
                    worker.writer_waiting.store(false, Ordering::SeqCst);
                    continue;
                }
                write_batch(&mut out, &batch);
                batch.clear();
                // A burst's buffer is not kept for the life of the process.
                if batch.capacity() > KEEP_CAPACITY {
                    batch = Vec::new();
                }
                std::thread::sleep(BATCH_INTERVAL);
            }
            let _ = out.flush();
            let _ = done_tx.send(());
        })?;
        Ok((Self { shared: shared.clone() }, WriterGuard { shared, done }))
    }

    /// Queues `bytes` (whole lines) for stdout; waits while this thread's buffer is full.
    pub(crate) fn write_line(&self, bytes: &[u8]) {
        let queued = MINE.try_with(|mine| {
            let mut mine = mine.try_borrow_mut().ok()?;
            let shard = match mine.iter().find(|(id, _)| *id == self.shared.id) {
                Some((_, shard)) => shard.clone(),
                None => {
                    let shard = self.shared.register();
                    mine.push((self.shared.id, shard.clone()));
                    shard
                }
            };
            drop(mine);
            Some(shard)
        });
        // A thread being torn down has no list: a buffer for this line alone.
        let shard = queued.ok().flatten().unwrap_or_else(|| self.shared.register());
        self.append(&shard, bytes);
    }

    fn append(&self, shard: &Shard, bytes: &[u8]) {
        let mut buf = lock(&shard.buf);
        while buf.bytes.len() >= self.shared.max && !buf.finished {
            buf.waiting += 1;
            buf = shard.space.wait(buf).unwrap_or_else(|e| e.into_inner());
            buf.waiting -= 1;
        }
        // Once the writer has stopped, lines are written here.
        if buf.finished {
            drop(buf);
            let _ = io::stdout().lock().write_all(bytes);
            return;
        }
        buf.bytes.extend_from_slice(bytes);
        drop(buf);
        if self.shared.writer_waiting.load(Ordering::SeqCst) {
            // Taken so the writer is either still looking (and sees the line) or asleep.
            let _st = lock(&self.shared.state);
            self.shared.lines.notify_one();
        }
    }
}

/// Bytes of batch buffer the writer keeps between batches.
const KEEP_CAPACITY: usize = 1 << 20;

/// How long the idle writer sleeps before looking again on its own (a safety net: a line
/// wakes it at once).
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Writes `batch` whole. A stdout opened non-blocking (`EAGAIN`) is waited for; a stdout that
/// fails otherwise (closed, broken pipe) cannot take the lines and nothing can report it.
fn write_batch<W: Write>(out: &mut W, mut batch: &[u8]) {
    while !batch.is_empty() {
        match out.write(batch) {
            Ok(0) => return,
            Ok(n) => batch = batch.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(BATCH_INTERVAL),
            Err(_) => return,
        }
    }
    let _ = out.flush();
}

/// Marks the writer stopped when its thread ends (also by a panic): loggers write directly.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        let mut lost = Vec::new();
        self.0.collect(&mut lost, true);
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.lines.notify_one();
        let _ = self.done.recv_timeout(FLUSH_TIMEOUT);
    }
}

impl Write for &LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    // A reference, not a clone: no shared reference count touched per line.
    type Writer = &'a LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output shared with the test; `gate` held by the test stops the writer mid-write.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let out = Out::default();
        let (writer, guard) = LineWriter::new(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write_line(format!("{t} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(who, _)| *who == t.to_string())
                .map(|(_, i)| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "thread {t}'s lines, in order");
        }
    }

    #[test]
    fn a_line_logged_at_rest_is_out_at_once_and_ended_threads_buffers_are_let_go() {
        let out = Out::default();
        // The writer never looks on its own within the test: only a line can wake it.
        let (writer, guard) = LineWriter::with_capacity(out.clone(), MAX_BUFFERED, Duration::from_secs(3600)).unwrap();
        let written = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while out.bytes.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap()
        };
        for round in 0..3 {
            // Let the writer fall asleep, then log from a thread that ends at once.
            std::thread::sleep(Duration::from_millis(20));
            let w = writer.clone();
            std::thread::spawn(move || w.write_line(format!("line {round}\n").as_bytes())).join().unwrap();
            let text = written(7 * (round + 1));
            assert!(text.ends_with(&format!("line {round}\n")), "woken, not left for the idle check: {text}");
        }
        // The ended threads' buffers are dropped once their lines are out.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !writer.shared.shards.lock().unwrap().list.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(writer.shared.shards.lock().unwrap().list.is_empty());
        drop(guard);
        // After the writer stops, lines go straight to stdout (not into a buffer nobody reads).
        writer.write_line(b"");
        assert!(lock(&writer.shared.shards).finished);
    }

    /// A non-blocking stdout: refuses every other write and takes at most 3 bytes at a time.
    struct Reluctant {
        bytes: Vec<u8>,
        calls: usize,
    }

    impl Write for Reluctant {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(3);
            self.bytes.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_and_refused_writes_are_retried_not_dropped() {
        let mut out = Reluctant { bytes: Vec::new(), calls: 0 };
        write_batch(&mut out, b"line one\nline two\n");
        assert_eq!(out.bytes, b"line one\nline two\n");
    }

    #[test]
    fn a_full_buffer_makes_loggers_wait_instead_of_dropping_lines() {
        let out = Out::default();
        let stuck = out.gate.lock().unwrap();
        let (writer, guard) = LineWriter::with_capacity(out.clone(), 64, IDLE_CHECK).unwrap();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let producer = std::thread::spawn(move || {
            for i in 0..20 {
                writer.write_line(format!("line {i:02} of twenty\n").as_bytes());
            }
            finished_tx.send(()).unwrap();
        });
        // stdout is stuck: 20 lines of 20 bytes cannot all be buffered in 64 bytes.
        assert!(finished.recv_timeout(Duration::from_millis(300)).is_err(), "the logger waited");
        drop(stuck);
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
        producer.join().unwrap();
        drop(guard);
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        let expected: String = (0..20).map(|i| format!("line {i:02} of twenty\n")).collect();
        assert_eq!(text, expected);
    }
}
