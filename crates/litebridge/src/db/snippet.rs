//! FTS5's `snippet()` and `highlight()` in time linear in the matches of a
//! row, and refused where FTS5's own match list would not be.
//!
//! # Why
//!
//! SQLite's `snippet(tbl, col, open, close, ellipsis, tokens)` scores a
//! window after every phrase instance of the row by walking all the row's
//! instances again, and finds the sentence each instance is in by walking
//! the sentence starts: `n * n` in the matches of one document, all inside
//! one function call that no deadline can interrupt and that allocates
//! nothing the memory budget could stop (20,000 matches took seconds, a
//! document at the length limit hours). Its `highlight()` copies its whole
//! answer again for each match it marks.
//!
//! These are the same functions, answer for answer, with `snippet()`'s
//! scores found by sliding windows. FTS5 gives a row's instances sorted by
//! column and position (it merges the phrases' position lists), so the
//! instances inside `[start, start + tokens)` for starts that only grow are
//! a window whose two ends only move forward, and its score (1,000 per
//! phrase seen, 1 per further instance) is kept up to date as instances
//! enter and leave. The sentence start before each instance is found by a
//! pointer that also only moves forward. What is left is linear: one
//! tokenization of each column scored and of the one shown, checked for a
//! stop (deadline, hold, halt) every few thousand tokens, with the memory it
//! holds (instances, counters, sentence starts, the answer) counted in the
//! request's budget.
//!
//! What neither can change is FTS5's own list of a row's instances, built
//! in one uninterruptible step before either function sees it: its merge
//! scans every phrase for each instance, and on `detail=none`/`column`
//! tables it tokenizes the row once per phrase, up to `phrases^2 * tokens`
//! (512 phrases over 8,000 tokens took 6 s). A call whose row and query
//! could ask that of it past [`MAX_WORK`] is refused before it starts,
//! naming both (as `json_patch` is refused past its work limit).
//!
//! They replace the built-ins on every connection through FTS5's extension
//! API: `xCreateFunction` under the same names, since FTS5 looks a name up
//! newest first. On an index that is not corrupt they answer exactly what
//! SQLite's own do, quirks included (an overlapping token, as trigrams
//! make, copies the rest of the document; with no phrase at all and no
//! column scored the answer is "out of memory"; an error met in one column
//! is forgotten if another column is scored after it): tested against
//! SQLite's own on random tables (tokenizers, `detail`, column sizes,
//! contentless), queries and arguments (`tests/snippet_property.rs`). On a
//! corrupt one they report the corruption where SQLite's own sometimes
//! carried on.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rusqlite::Connection;
use rusqlite::ffi::{
    self, FTS5_TOKEN_COLOCATED, Fts5Context, Fts5ExtensionApi, SQLITE_CORRUPT_VTAB, SQLITE_MISUSE,
    SQLITE_NOMEM, SQLITE_OK, SQLITE_TOOBIG, sqlite3_context, sqlite3_value,
};

use crate::db::guard::Ticker;
use crate::db::heap::{self, Charge};

/// What the function knows of the connection it is registered on.
struct Limits {
    /// The connection's length limit: no answer is longer.
    max_len: usize,
    /// The database's halt flag (see `guard::install`).
    halt: Arc<AtomicBool>,
}

/// Registers the linear `snippet()` and `highlight()` on `conn`, in place
/// of FTS5's own.
pub(crate) fn install(
    conn: &Connection,
    max_len: usize,
    halt: Arc<AtomicBool>,
) -> rusqlite::Result<()> {
    let api = fts5_api(conn)?;
    let functions: [(&CStr, Function); 2] = [(c"snippet", snippet), (c"highlight", highlight)];
    for (name, function) in functions {
        let limits = Box::into_raw(Box::new(Limits {
            max_len,
            halt: halt.clone(),
        }));
        // SAFETY: `api` is the connection's live FTS5 global, which outlives
        // the registration; FTS5 keeps `limits` until the connection closes
        // and then gives it to `drop_limits`, the only place it is freed.
        let rc = unsafe {
            match (*api).xCreateFunction {
                Some(create) => create(
                    api,
                    name.as_ptr(),
                    limits.cast(),
                    Some(function),
                    Some(drop_limits),
                ),
                None => SQLITE_MISUSE,
            }
        };
        if rc != SQLITE_OK {
            // SAFETY: not registered, so FTS5 never saw it: still ours alone.
            drop(unsafe { Box::from_raw(limits) });
            return Err(failure(rc, "registering FTS5's snippet() and highlight()"));
        }
    }
    Ok(())
}

type Function = unsafe extern "C" fn(
    *const Fts5ExtensionApi,
    *mut Fts5Context,
    *mut sqlite3_context,
    c_int,
    *mut *mut sqlite3_value,
);

/// The connection's FTS5 API, asked for as SQLite documents it: `SELECT
/// fts5(?1)` with a pointer bound as "fts5_api_ptr".
fn fts5_api(conn: &Connection) -> rusqlite::Result<*mut ffi::fts5_api> {
    // Preparing reads the schema first: a damaged one fails here, said in
    // SQLite's words (review 216 saw it reported as "FTS5 is not
    // available").
    conn.prepare("SELECT fts5(?1)")?;
    let mut api: *mut ffi::fts5_api = std::ptr::null_mut();
    let mut stmt = std::ptr::null_mut();
    // SAFETY: `handle()` is the live connection `conn` owns, used on this
    // thread while borrowed; the statement is prepared, bound to `api`
    // (which lives until after the statement is finalized), stepped once
    // and finalized here.
    let rc = unsafe {
        let db = conn.handle();
        let rc = ffi::sqlite3_prepare_v2(
            db,
            c"SELECT fts5(?1)".as_ptr(),
            -1,
            &mut stmt,
            std::ptr::null_mut(),
        );
        if rc == SQLITE_OK {
            ffi::sqlite3_bind_pointer(
                stmt,
                1,
                (&raw mut api).cast(),
                c"fts5_api_ptr".as_ptr(),
                None,
            );
            ffi::sqlite3_step(stmt);
        }
        ffi::sqlite3_finalize(stmt);
        rc
    };
    if rc != SQLITE_OK || api.is_null() {
        return Err(failure(rc, "FTS5 is not available"));
    }
    Ok(api)
}

fn failure(rc: c_int, what: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(what.to_owned()))
}

unsafe extern "C" fn drop_limits(p: *mut c_void) {
    // SAFETY: `p` is the `Limits` boxed by `install`, given back once.
    drop(unsafe { Box::from_raw(p.cast::<Limits>()) });
}

/// `snippet(tbl, col, open, close, ellipsis, tokens)`, called by FTS5 for
/// each row.
unsafe extern "C" fn snippet(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    ctx: *mut sqlite3_context,
    n_args: c_int,
    args: *mut *mut sqlite3_value,
) {
    // SAFETY: as FTS5 calls an auxiliary function.
    unsafe { answer(api, fts, ctx, n_args, args, 5, build) }
}

/// `highlight(tbl, col, open, close)`, called by FTS5 for each row.
unsafe extern "C" fn highlight(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    ctx: *mut sqlite3_context,
    n_args: c_int,
    args: *mut *mut sqlite3_value,
) {
    // SAFETY: as FTS5 calls an auxiliary function.
    unsafe { answer(api, fts, ctx, n_args, args, 3, mark) }
}

type Body = fn(&Row<'_>, &[*mut sqlite3_value], &Limits) -> Result<Option<Vec<u8>>, Failure>;

/// Runs `body` for one row with `wanted` arguments and sets the call's
/// result from it: text, NULL, or the error. A panic is an error too.
///
/// # Safety
/// The arguments are those FTS5 passes an auxiliary function registered by
/// `install`: its API (version 4 or later is checked here), the row's
/// context, the call's context and `n_args` values.
unsafe fn answer(
    api: *const Fts5ExtensionApi,
    fts: *mut Fts5Context,
    ctx: *mut sqlite3_context,
    n_args: c_int,
    args: *mut *mut sqlite3_value,
    wanted: c_int,
    body: Body,
) {
    let answer = catch_unwind(AssertUnwindSafe(|| {
        if n_args != wanted {
            return Err(Failure::Message(if wanted == 5 {
                c"wrong number of arguments to function snippet()"
            } else {
                c"wrong number of arguments to function highlight()"
            }));
        }
        // SAFETY: see the function's contract; the user data is the
        // `Limits` given at registration. `xTokenize_v2` and
        // `xColumnLocale` are only in version 4 of the API and later.
        let (row, args, limits) = unsafe {
            let api = &*api;
            if api.iVersion < 4 {
                return Err(Failure::Code(SQLITE_MISUSE));
            }
            let limits = match api.xUserData {
                Some(f) => &*f(fts).cast::<Limits>(),
                None => return Err(Failure::Code(SQLITE_MISUSE)),
            };
            let args = std::slice::from_raw_parts(args, wanted as usize);
            (Row { api, fts }, args, limits)
        };
        body(&row, args, limits)
    }));
    // SAFETY: `ctx` is the call's context; each result function copies what
    // it is given (SQLITE_TRANSIENT) or takes a static string.
    unsafe {
        match answer {
            Ok(Ok(Some(text))) => ffi::sqlite3_result_text64(
                ctx,
                text.as_ptr().cast(),
                text.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            Ok(Ok(None)) => ffi::sqlite3_result_null(ctx),
            Ok(Err(Failure::Code(SQLITE_TOOBIG))) => ffi::sqlite3_result_error_toobig(ctx),
            Ok(Err(Failure::Code(rc))) => ffi::sqlite3_result_error_code(ctx, rc),
            Ok(Err(Failure::Message(m))) => ffi::sqlite3_result_error(ctx, m.as_ptr(), -1),
            Ok(Err(Failure::Refused(m))) => ffi::sqlite3_result_error(ctx, m.as_ptr(), -1),
            Err(_) => ffi::sqlite3_result_error(ctx, c"snippet() failed".as_ptr(), -1),
        }
    }
}

enum Failure {
    Code(c_int),
    Message(&'static CStr),
    /// Refused before the work starts: too much of it (see [`MAX_WORK`]).
    Refused(std::ffi::CString),
}

impl From<c_int> for Failure {
    fn from(rc: c_int) -> Failure {
        Failure::Code(rc)
    }
}

/// The most work one call may ask of FTS5's instance list: the square of
/// the query's phrases times the row's tokens. FTS5 builds the list in one
/// step that no deadline interrupts and that allocates little: it merges
/// the phrases' positions by scanning every phrase for each instance
/// (`instances * phrases`, and with every phrase matching every token,
/// `phrases^2 * tokens`), and on `detail=none`/`column` tables it tokenizes
/// the row for each phrase. 2^28 is well under a second; a query of 8
/// phrases may still look at rows of 4 million tokens.
pub(crate) const MAX_WORK: i64 = 1 << 28;

/// Refuses a call whose instance list would take more than [`MAX_WORK`].
fn check_work(row: &Row<'_>, name: &str, phrases: c_int) -> Result<(), Failure> {
    let tokens: i64 = (0..row.column_count())
        .map(|i| i64::from(row.column_size(i).unwrap_or(0).max(0)))
        .sum();
    let p = i64::from(phrases.max(0));
    let work = p.saturating_mul(p).saturating_mul(tokens);
    if work <= MAX_WORK {
        return Ok(());
    }
    let message = format!(
        "{name}() over a query of {p} phrases and a row of {tokens} tokens is refused: FTS5 \
         finds the matches in one step no deadline can interrupt, whose work grows as the \
         square of the phrases times the tokens ({work}, at most {MAX_WORK}); search with fewer phrases"
    );
    Err(Failure::Refused(
        std::ffi::CString::new(message).unwrap_or_default(),
    ))
}

/// One phrase instance: which phrase, in which column, at which token.
#[derive(Clone, Copy)]
struct Inst {
    phrase: c_int,
    col: c_int,
    off: c_int,
}

/// The snippet of the row, or `None` where SQLite's answers NULL (a column
/// without text, as in a contentless table).
fn build(
    row: &Row<'_>,
    args: &[*mut sqlite3_value],
    limits: &Limits,
) -> Result<Option<Vec<u8>>, Failure> {
    let mut ticker = Ticker::new(&limits.halt);
    let col = clamped_int(args[0]);
    let open = text_arg(&args[1]);
    let close = text_arg(&args[2]);
    let ellipsis = text_arg(&args[3]);
    let tokens = int_arg(args[4]).clamp(0, 64) as c_int;
    let phrases = row.phrase_count();
    check_work(row, "snippet", phrases)?;
    let sizes: Vec<c_int> = (0..phrases).map(|p| row.phrase_size(p)).collect();
    let (insts, _charge) = row.instances(phrases)?;
    let best = choose(row, &insts, &sizes, col, tokens, &mut ticker)?;

    let text = row.column_text(best.col)?;
    let col_size = match best.col_size {
        0 => row.column_size(best.col)?,
        n => n,
    };
    let Some(text) = text else {
        return Ok(None);
    };
    let mut out = Out::new(limits.max_len)?;
    let mut show = Highlight {
        text,
        open,
        close,
        range_start: best.start,
        range_end: best.start + tokens - 1,
        iter: Coalesced::new(&insts[column_range(&insts, best.col)], &sizes),
        pos: 0,
        off: 0,
        is_open: false,
    };
    if best.start > 0 {
        out.push(ellipsis)?;
    }
    while show.iter.start >= 0 && show.iter.start < best.start {
        show.iter.next();
    }
    show.run(row, best.col, &mut out, &mut ticker)?;
    if show.range_end >= col_size - 1 {
        out.push(show.rest()?)?;
    } else {
        out.push(ellipsis)?;
    }
    Ok(Some(out.bytes))
}

/// The window `snippet()` shows: its column, first token, and the column's
/// size in tokens (0 when no window scored).
struct Best {
    col: c_int,
    start: c_int,
    col_size: c_int,
}

/// Scores a window after each instance, and from the start of its
/// sentence, in each column `col` names (all when negative), as SQLite's
/// own does, and keeps the first best.
fn choose(
    row: &Row<'_>,
    insts: &[Inst],
    sizes: &[c_int],
    col: c_int,
    tokens: c_int,
    ticker: &mut Ticker<'_>,
) -> Result<Best, Failure> {
    let mut best = Best {
        col: col.max(0),
        start: 0,
        col_size: 0,
    };
    let mut best_score = 0i64;
    let _charge = Charge::take(sizes.len() * 8).map_err(|_| SQLITE_NOMEM)?;
    let (mut after_counts, mut sentence_counts) = (vec![0; sizes.len()], vec![0; sizes.len()]);
    // SQLite's own carries an error from one column to the next, where
    // reading the column's text resets it: with no phrase at all its
    // allocation of one flag per phrase fails ("out of memory" unless a
    // column is scored), and an instance past a column's end (a
    // contentless table without sizes) ends that column only.
    let mut pending = (sizes.is_empty()).then_some(SQLITE_NOMEM);
    for i in (0..row.column_count()).filter(|&i| col < 0 || col == i) {
        let text = row.column_text(i)?;
        pending = None;
        let mine = &insts[column_range(insts, i)];
        let starts = sentence_starts(row, i, text, ticker)?;
        let doc_size = row.column_size(i)?;
        let mut after = Window::new(mine, sizes, &mut after_counts);
        let mut sentence = Window::new(mine, sizes, &mut sentence_counts);
        let mut jj = 0;
        for inst in mine {
            ticker.tick().map_err(|_| ffi::SQLITE_INTERRUPT)?;
            let io = inst.off;
            if io > doc_size {
                pending = Some(SQLITE_CORRUPT_VTAB);
                break;
            }
            after.slide(i64::from(io), i64::from(tokens));
            let score = after.score();
            if score > best_score {
                best_score = score;
                best = Best {
                    col: i,
                    start: after.adjusted_start(tokens, doc_size),
                    col_size: doc_size,
                };
            }
            if !starts.0.is_empty() && doc_size > tokens {
                while jj + 1 < starts.0.len() && starts.0[jj + 1] <= io {
                    jj += 1;
                }
                let s = starts.0[jj];
                if s < io {
                    sentence.slide(i64::from(s), i64::from(tokens));
                    let score = sentence.score() + if s == 0 { 120 } else { 100 };
                    if score > best_score {
                        best_score = score;
                        best = Best {
                            col: i,
                            start: s,
                            col_size: doc_size,
                        };
                    }
                }
            }
        }
        after.clear();
        sentence.clear();
    }
    match pending {
        Some(rc) => Err(rc.into()),
        None => Ok(best),
    }
}

/// `highlight()`: the whole column, its matches marked, or `None` where
/// SQLite's answers NULL (a column without text).
fn mark(
    row: &Row<'_>,
    args: &[*mut sqlite3_value],
    limits: &Limits,
) -> Result<Option<Vec<u8>>, Failure> {
    let mut ticker = Ticker::new(&limits.halt);
    let col = clamped_int(args[0]);
    let open = text_arg(&args[1]);
    let close = text_arg(&args[2]);
    let text = match row.column_text(col) {
        // A column that does not exist: empty, as SQLite's own answers.
        Err(ffi::SQLITE_RANGE) => return Ok(Some(Vec::new())),
        Err(rc) => return Err(rc.into()),
        Ok(None) => return Ok(None),
        Ok(Some(text)) => text,
    };
    let phrases = row.phrase_count();
    check_work(row, "highlight", phrases)?;
    let sizes: Vec<c_int> = (0..phrases).map(|p| row.phrase_size(p)).collect();
    let (insts, _charge) = row.instances(phrases)?;
    let mut out = Out::new(limits.max_len)?;
    let mut show = Highlight {
        text,
        open,
        close,
        range_start: 0,
        range_end: -1,
        iter: Coalesced::new(&insts[column_range(&insts, col)], &sizes),
        pos: 0,
        off: 0,
        is_open: false,
    };
    show.run(row, col, &mut out, &mut ticker)?;
    out.push(show.rest()?)?;
    Ok(Some(out.bytes))
}

/// The instances of column `col`: a run of the list, which is sorted by
/// column and position (checked by `Row::instances`).
fn column_range(insts: &[Inst], col: c_int) -> std::ops::Range<usize> {
    insts.partition_point(|x| x.col < col)..insts.partition_point(|x| x.col <= col)
}

/// The first token of each sentence of column `col` (a token after white
/// space that follows a '.' or ':'; the first token), as SQLite's own finds
/// them. Memory counted in the budget.
fn sentence_starts(
    row: &Row<'_>,
    col: c_int,
    text: Option<&[u8]>,
    ticker: &mut Ticker<'_>,
) -> Result<(Vec<c_int>, Charge), c_int> {
    let mut starts: Vec<c_int> = Vec::new();
    let mut charge = Charge::take(0).map_err(|_| SQLITE_NOMEM)?;
    let locale = row.column_locale(col)?;
    let doc = text.unwrap_or_default();
    let mut pos: c_int = 0;
    // The last byte before `scanned` that is not white space (as an index,
    // or -1), and whether the byte just before `scanned` is white space:
    // token starts only grow, so the scan back SQLite's own does for every
    // token (`len(gap)` each, quadratic for overlapping tokens) is one scan
    // forward here.
    let mut scanned = 0usize;
    let mut last_solid: isize = -1;
    row.tokenize(text, locale, &mut |flags, start, _end| {
        if flags & FTS5_TOKEN_COLOCATED != 0 {
            return SQLITE_OK;
        }
        if ticker.tick().is_err() {
            return ffi::SQLITE_INTERRUPT;
        }
        let first = if pos > 0 {
            let Ok(start) = usize::try_from(start) else {
                return SQLITE_CORRUPT_VTAB;
            };
            let Some(before) = doc.get(..start) else {
                return SQLITE_CORRUPT_VTAB;
            };
            if start < scanned {
                // A start behind the last: look back from it directly.
                scanned = 0;
                last_solid = -1;
            }
            for (i, &c) in before.iter().enumerate().skip(scanned) {
                if !is_space(c) {
                    last_solid = i as isize;
                }
            }
            scanned = start;
            let gap = last_solid + 1 < start as isize;
            gap && last_solid >= 0 && matches!(doc[last_solid as usize], b'.' | b':')
        } else {
            true
        };
        if first {
            if starts.len() == starts.capacity()
                && charge.grow(starts.capacity().max(64) * 4).is_err()
            {
                return SQLITE_NOMEM;
            }
            starts.push(pos);
        }
        pos += 1;
        SQLITE_OK
    })?;
    Ok((starts, charge))
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The instances of one column inside `[start, start + tokens)`, for
/// starts that never decrease, scored as SQLite's `fts5SnippetScore` scores
/// them: 1,000 for each phrase's first instance, 1 for each further one.
struct Window<'a> {
    insts: &'a [Inst],
    lo: usize,
    hi: usize,
    /// Instances of each phrase inside (all zero when it is empty: one
    /// array serves every column, see [`Window::clear`]).
    count: &'a mut [u32],
    /// Phrases with at least one instance inside.
    distinct: i64,
    /// Tokens in each phrase.
    sizes: &'a [c_int],
}

impl<'a> Window<'a> {
    fn new(insts: &'a [Inst], sizes: &'a [c_int], count: &'a mut [u32]) -> Window<'a> {
        Window {
            insts,
            lo: 0,
            hi: 0,
            count,
            distinct: 0,
            sizes,
        }
    }

    /// Empties the window, leaving its counts all zero for the next column.
    fn clear(self) {
        for inst in &self.insts[self.lo..self.hi] {
            self.count[inst.phrase as usize] = 0;
        }
    }

    fn slide(&mut self, start: i64, tokens: i64) {
        let end = start + tokens;
        while self.lo < self.insts.len() && i64::from(self.insts[self.lo].off) < start {
            if self.lo < self.hi {
                let p = self.insts[self.lo].phrase as usize;
                self.count[p] -= 1;
                if self.count[p] == 0 {
                    self.distinct -= 1;
                }
            }
            self.lo += 1;
        }
        self.hi = self.hi.max(self.lo);
        while self.hi < self.insts.len() && i64::from(self.insts[self.hi].off) < end {
            let p = self.insts[self.hi].phrase as usize;
            if self.count[p] == 0 {
                self.distinct += 1;
            }
            self.count[p] += 1;
            self.hi += 1;
        }
    }

    fn score(&self) -> i64 {
        let inside = (self.hi - self.lo) as i64;
        1000 * self.distinct + (inside - self.distinct)
    }

    /// Where the snippet starts so that the window's instances sit in its
    /// middle, inside the document: SQLite's arithmetic, C's rounding.
    fn adjusted_start(&self, tokens: c_int, doc_size: c_int) -> c_int {
        let first = i64::from(self.insts[self.lo].off);
        let lastx = self.insts[self.hi - 1];
        let last = i64::from(lastx.off) + i64::from(self.sizes[lastx.phrase as usize]);
        let tokens = i64::from(tokens);
        let mut adj = first - (tokens - (last - first)) / 2;
        if adj + tokens > i64::from(doc_size) {
            adj = i64::from(doc_size) - tokens;
        }
        adj.max(0) as c_int
    }
}

/// Overlapping instances of one column merged into one, in order, as
/// SQLite's `CInstIter` gives them: `start` and `end` are the first and
/// last token of the current one, -1 when there is none left.
struct Coalesced<'a> {
    insts: &'a [Inst],
    sizes: &'a [c_int],
    next: usize,
    start: c_int,
    end: c_int,
}

impl<'a> Coalesced<'a> {
    fn new(insts: &'a [Inst], sizes: &'a [c_int]) -> Coalesced<'a> {
        let mut iter = Coalesced {
            insts,
            sizes,
            next: 0,
            start: -1,
            end: -1,
        };
        iter.next();
        iter
    }

    fn next(&mut self) {
        self.start = -1;
        self.end = -1;
        while let Some(inst) = self.insts.get(self.next) {
            let end = inst.off - 1 + self.sizes[inst.phrase as usize];
            if self.start < 0 {
                self.start = inst.off;
                self.end = end;
            } else if inst.off <= self.end {
                self.end = self.end.max(end);
            } else {
                break;
            }
            self.next += 1;
        }
    }
}

/// The state of the pass over the shown column's tokens that copies the
/// snippet's text and marks its matches (SQLite's `fts5HighlightCb`).
struct Highlight<'a> {
    text: &'a [u8],
    open: &'a [u8],
    close: &'a [u8],
    range_start: c_int,
    range_end: c_int,
    iter: Coalesced<'a>,
    /// The token's position.
    pos: c_int,
    /// Bytes of `text` copied so far.
    off: c_int,
    is_open: bool,
}

impl<'a> Highlight<'a> {
    fn token(
        &mut self,
        flags: c_int,
        start: c_int,
        end: c_int,
        out: &mut Out,
    ) -> Result<(), c_int> {
        if flags & FTS5_TOKEN_COLOCATED != 0 {
            return Ok(());
        }
        let pos = self.pos;
        self.pos += 1;
        // A range of no tokens (`tokens` 0) is no range at all: every token
        // is looked at, as SQLite's own does.
        if self.range_end >= 0 {
            if pos < self.range_start || pos > self.range_end {
                return Ok(());
            }
            if self.range_start != 0 && pos == self.range_start {
                self.off = start;
            }
        }
        if self.is_open && (pos <= self.iter.start || self.iter.start < 0) && start > self.off {
            out.push(self.close)?;
            self.is_open = false;
        }
        if pos == self.iter.start && !self.is_open {
            out.push(self.copy(start)?)?;
            out.push(self.open)?;
            self.off = start;
            self.is_open = true;
        }
        if pos == self.iter.end {
            if !self.is_open {
                out.push(self.open)?;
                self.is_open = true;
            }
            out.push(self.copy(end)?)?;
            self.off = end;
            self.iter.next();
        }
        if pos == self.range_end {
            if self.is_open {
                if self.iter.start >= 0 && pos >= self.iter.start {
                    out.push(self.copy(end)?)?;
                    self.off = end;
                }
                out.push(self.close)?;
                self.is_open = false;
            }
            out.push(self.copy(end)?)?;
            self.off = end;
        }
        Ok(())
    }

    /// Passes over the tokens of column `col`, copying and marking.
    fn run(
        &mut self,
        row: &Row<'_>,
        col: c_int,
        out: &mut Out,
        ticker: &mut Ticker<'_>,
    ) -> Result<(), Failure> {
        let locale = row.column_locale(col)?;
        let text = self.text;
        row.tokenize(Some(text), locale, &mut |flags, start, end| {
            if ticker.tick().is_err() {
                return ffi::SQLITE_INTERRUPT;
            }
            match self.token(flags, start, end, out) {
                Ok(()) => SQLITE_OK,
                Err(rc) => rc,
            }
        })?;
        if self.is_open {
            out.push(self.close)?;
            self.is_open = false;
        }
        Ok(())
    }

    /// The text after what was copied.
    fn rest(&self) -> Result<&'a [u8], c_int> {
        piece(
            self.text,
            self.off,
            self.text.len() as i64 - i64::from(self.off),
        )
    }

    /// The text from what was copied last up to byte `to`.
    fn copy(&self, to: c_int) -> Result<&[u8], c_int> {
        piece(self.text, self.off, i64::from(to) - i64::from(self.off))
    }
}

/// `n` bytes of `text` from byte `from`, as SQLite's `%.*s` copies them:
/// up to the first NUL, and, for a negative `n` (a token that overlaps
/// what was copied), everything up to the first NUL.
fn piece(text: &[u8], from: c_int, n: i64) -> Result<&[u8], c_int> {
    let from = usize::try_from(from).map_err(|_| SQLITE_CORRUPT_VTAB)?;
    let rest = text.get(from..).ok_or(SQLITE_CORRUPT_VTAB)?;
    let rest = match usize::try_from(n) {
        Ok(n) => rest.get(..n).ok_or(SQLITE_CORRUPT_VTAB)?,
        Err(_) => rest,
    };
    Ok(until_nul(rest))
}

fn until_nul(b: &[u8]) -> &[u8] {
    match memchr::memchr(0, b) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// The answer being built: refused past the length limit, its memory
/// counted in the request's budget.
struct Out {
    bytes: Vec<u8>,
    charge: Charge,
    max_len: usize,
}

impl Out {
    fn new(max_len: usize) -> Result<Out, c_int> {
        Ok(Out {
            bytes: Vec::new(),
            charge: Charge::take(0).map_err(|_| SQLITE_NOMEM)?,
            max_len,
        })
    }

    fn push(&mut self, b: &[u8]) -> Result<(), c_int> {
        let b = until_nul(b);
        let len = self.bytes.len() + b.len();
        if len > self.max_len {
            return Err(SQLITE_TOOBIG);
        }
        if len > self.bytes.capacity() {
            let before = self.bytes.capacity();
            self.bytes.reserve(b.len());
            self.charge
                .grow(self.bytes.capacity() - before)
                .map_err(|_| SQLITE_NOMEM)?;
        }
        self.bytes.extend_from_slice(b);
        Ok(())
    }
}

/// The row FTS5 calls the function for, through its extension API. Each
/// method is one call of the API; a missing entry (an older FTS5) answers
/// SQLITE_MISUSE.
struct Row<'a> {
    api: &'a Fts5ExtensionApi,
    fts: *mut Fts5Context,
}

/// A locale as FTS5 gives it: a pointer (maybe null) and a length.
#[derive(Clone, Copy)]
struct Locale(*const c_char, c_int);

fn check(rc: c_int) -> Result<(), c_int> {
    if rc == SQLITE_OK { Ok(()) } else { Err(rc) }
}

impl<'a> Row<'a> {
    fn column_count(&self) -> c_int {
        // SAFETY (this and every call below): `fts` is the context FTS5
        // passed with `api` for this call, and the out-parameters are
        // locals of the right types.
        self.api.xColumnCount.map_or(0, |f| unsafe { f(self.fts) })
    }

    fn phrase_count(&self) -> c_int {
        self.api.xPhraseCount.map_or(0, |f| unsafe { f(self.fts) })
    }

    fn phrase_size(&self, phrase: c_int) -> c_int {
        self.api
            .xPhraseSize
            .map_or(0, |f| unsafe { f(self.fts, phrase) })
    }

    /// Every phrase instance of the row, checked to be sorted by column and
    /// position with phrases that exist (else the index is corrupt), and
    /// the memory they take from the budget.
    fn instances(&self, phrases: c_int) -> Result<(Vec<Inst>, Charge), c_int> {
        let (Some(count), Some(inst)) = (self.api.xInstCount, self.api.xInst) else {
            return Err(SQLITE_MISUSE);
        };
        let mut n = 0;
        check(unsafe { count(self.fts, &mut n) })?;
        let n = usize::try_from(n).map_err(|_| SQLITE_CORRUPT_VTAB)?;
        let charge = Charge::take(n * std::mem::size_of::<Inst>()).map_err(|_| SQLITE_NOMEM)?;
        let mut insts = Vec::with_capacity(n);
        for i in 0..n {
            let (mut phrase, mut col, mut off) = (0, 0, 0);
            check(unsafe { inst(self.fts, i as c_int, &mut phrase, &mut col, &mut off) })?;
            if !(0..phrases).contains(&phrase) || col < 0 || off < 0 {
                return Err(SQLITE_CORRUPT_VTAB);
            }
            insts.push(Inst { phrase, col, off });
        }
        if insts
            .windows(2)
            .any(|w| (w[0].col, w[0].off) > (w[1].col, w[1].off))
        {
            return Err(SQLITE_CORRUPT_VTAB);
        }
        Ok((insts, charge))
    }

    /// The text of column `col`, `None` where FTS5 has none to give.
    fn column_text(&self, col: c_int) -> Result<Option<&'a [u8]>, c_int> {
        let f = self.api.xColumnText.ok_or(SQLITE_MISUSE)?;
        let (mut p, mut n) = (std::ptr::null(), 0);
        check(unsafe { f(self.fts, col, &mut p, &mut n) })?;
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: FTS5 gives `n` bytes at `p`, valid while the cursor stays
        // on this row, which it does for the whole call.
        Ok(Some(unsafe {
            std::slice::from_raw_parts(p.cast::<u8>(), n.max(0) as usize)
        }))
    }

    fn column_size(&self, col: c_int) -> Result<c_int, c_int> {
        let f = self.api.xColumnSize.ok_or(SQLITE_MISUSE)?;
        let mut n = 0;
        check(unsafe { f(self.fts, col, &mut n) })?;
        Ok(n)
    }

    fn column_locale(&self, col: c_int) -> Result<Locale, c_int> {
        let f = self.api.xColumnLocale.ok_or(SQLITE_MISUSE)?;
        let (mut p, mut n) = (std::ptr::null(), 0);
        check(unsafe { f(self.fts, col, &mut p, &mut n) })?;
        Ok(Locale(p, n))
    }

    /// Runs the table's tokenizer over `text`, calling `each(flags, start,
    /// end)` for every token; its first code other than SQLITE_OK stops the
    /// pass and is the answer.
    fn tokenize(
        &self,
        text: Option<&[u8]>,
        locale: Locale,
        each: &mut dyn FnMut(c_int, c_int, c_int) -> c_int,
    ) -> Result<(), c_int> {
        let f = self.api.xTokenize_v2.ok_or(SQLITE_MISUSE)?;
        let (p, n) = text.map_or((std::ptr::null(), 0), |t| {
            (t.as_ptr().cast(), t.len() as c_int)
        });
        let mut each = each;
        // SAFETY: `each` outlives the call, and `token` is only called
        // during it, with this pointer.
        check(unsafe {
            f(
                self.fts,
                p,
                n,
                locale.0,
                locale.1,
                (&raw mut each).cast(),
                Some(token),
            )
        })
    }
}

unsafe extern "C" fn token(
    each: *mut c_void,
    flags: c_int,
    _token: *const c_char,
    _len: c_int,
    start: c_int,
    end: c_int,
) -> c_int {
    // SAFETY: `each` is the closure `Row::tokenize` passed, alive during
    // the tokenization that calls this.
    let each = unsafe { &mut *each.cast::<&mut dyn FnMut(c_int, c_int, c_int) -> c_int>() };
    catch_unwind(AssertUnwindSafe(|| each(flags, start, end))).unwrap_or(ffi::SQLITE_ERROR)
}

/// An argument as an integer (`sqlite3_value_int64`).
fn int_arg(v: *mut sqlite3_value) -> i64 {
    // SAFETY: `v` is one of the call's arguments, valid during the call.
    unsafe { ffi::sqlite3_value_int64(v) }
}

/// A column argument clamped to `-1..=i32::MAX`, as SQLite's own does so
/// that a huge number cannot wrap to a real column.
fn clamped_int(v: *mut sqlite3_value) -> c_int {
    int_arg(v).clamp(-1, i64::from(c_int::MAX)) as c_int
}

/// An argument as text up to its first NUL, as SQLite's own reads it (NULL
/// as empty). Valid for the call.
fn text_arg(v: &*mut sqlite3_value) -> &[u8] {
    // SAFETY: `v` is one of the call's arguments; the text SQLite returns
    // lives, unchanged, until the call ends, as nothing converts `v` again.
    let p = heap::lenient(|| unsafe { ffi::sqlite3_value_text(*v) });
    if p.is_null() {
        return b"";
    }
    unsafe { CStr::from_ptr(p.cast()) }.to_bytes()
}
