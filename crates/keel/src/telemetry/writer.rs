//! Where log lines go: a bounded buffer that one thread writes to stdout in batches.
//!
//! A request never waits on a write syscall: logging a line appends it to a shared buffer (a
//! copy under a mutex). A dedicated thread takes the whole buffer at once, writes it with one
//! call, then lets lines gather for [`BATCH_INTERVAL`] before taking the next batch, so under
//! load stdout sees about a thousand writes a second however many lines there are. When the
//! buffer is empty the thread sleeps until the next line arrives (no CPU while idle), so a line
//! logged at rest is out at once.
//!
//! Nothing is ever dropped: when stdout cannot keep up and [`MAX_BUFFERED`] bytes are waiting,
//! a thread that logs waits for the writer (backpressure) instead of losing the line. Dropping
//! the [`WriterGuard`] writes out what is buffered and stops the thread (waiting at most
//! [`FLUSH_TIMEOUT`] for a stuck stdout); lines logged after the thread has stopped are written
//! directly. A stdout opened non-blocking is waited for, not given up on.
//!
//! Why not `tracing-appender`: its worker spins between lines (crossbeam's backoff: `pause`,
//! then `sched_yield`), which under load costs about 2.5 µs of CPU per line on a thread that
//! competes with the request workers for the same cores.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer lets lines gather after writing a batch.
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_millis(1);

/// Bytes buffered before a thread that logs waits for the writer.
pub(crate) const MAX_BUFFERED: usize = 4 << 20;

/// How long dropping the guard waits for buffered lines to be written.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    state: Mutex<State>,
    /// Signalled when lines arrive while the writer waits, and on close.
    lines: Condvar,
    /// Signalled when the writer has taken the buffer.
    space: Condvar,
    max: usize,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    writer_waiting: bool,
    /// The guard was dropped: the writer drains what is buffered, then stops.
    closed: bool,
    /// The writer thread has stopped: lines go straight to stdout.
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buffer half-written in a way that
        // matters more than losing logs: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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

impl LineWriter {
    /// Starts the writer thread on `out`.
    pub(crate) fn new<W: Write + Send + 'static>(out: W) -> io::Result<(Self, WriterGuard)> {
        Self::with_capacity(out, MAX_BUFFERED)
    }

    fn with_capacity<W: Write + Send + 'static>(mut out: W, max: usize) -> io::Result<(Self, WriterGuard)> {
        let shared =
            Arc::new(Shared { state: Mutex::new(State::default()), lines: Condvar::new(), space: Condvar::new(), max });
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = shared.clone();
        std::thread::Builder::new().name("keel-log-writer".into()).spawn(move || {
            // However the thread ends, loggers stop waiting for it and write directly.
            let _finished = Finished(worker.clone());
            let mut batch = Vec::new();
            loop {
                {
                    let mut st = worker.lock();
                    while st.buf.is_empty() && !st.closed {
                        st.writer_waiting = true;
                        st = worker.lines.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    if st.buf.is_empty() {
                        // Closed and drained. Decided under the lock, so no line can slip in
                        // between: from here on loggers write directly.
                        st.finished = true;
                        break;
                    }
                    std::mem::swap(&mut st.buf, &mut batch);
                }
                worker.space.notify_all();
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

    /// Queues `bytes` (whole lines) for stdout; waits while the buffer is full.
    pub(crate) fn write_line(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        while st.buf.len() >= self.shared.max && !st.finished {
            st = self.shared.space.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // While the writer drains at shutdown, lines still queue behind the buffered ones, so
        // the order holds; once it has stopped they are written here.
        if st.finished {
            drop(st);
            let _ = io::stdout().lock().write_all(bytes);
            return;
        }
        st.buf.extend_from_slice(bytes);
        if std::mem::take(&mut st.writer_waiting) {
            drop(st);
            self.shared.lines.notify_one();
        }
    }
}

/// Bytes of batch buffer the writer keeps between batches.
const KEEP_CAPACITY: usize = 1 << 20;

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

/// Marks the writer stopped when its thread ends.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.closed = true;
        st.finished = true;
        drop(st);
        self.0.space.notify_all();
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
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
        let (writer, guard) = LineWriter::with_capacity(out.clone(), 64).unwrap();
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
