//! A reader for Yjs v1 updates that decides what npm yjs would do with one
//! (ARCHITECTURE.md, "Validating updates").
//!
//! yrs is not a safe place to find out: it integrates blocks whose
//! dependencies are missing (with skip placeholders) and keeps the rest as a
//! "pending" update whose merging frees blocks it still points to, and it
//! decodes a few content kinds differently from yjs. So every client update
//! is read here first, against what the room already holds ([`Known`]):
//!
//! - [`Verdict::Accept`]: yjs integrates all of it at once. Only such updates
//!   reach a room stream, so no reader (yjs client or yrs) ever holds pending
//!   structs for a room.
//! - [`Verdict::Hold`]: yjs would keep some of it pending (a dependency has not
//!   reached the room yet); the session keeps it until the room catches up.
//! - [`Verdict::Redundant`]: nothing the room does not already hold.
//! - `Err(InvalidUpdate)`: yjs would throw, or yjs and yrs would read it
//!   differently; an honest client never sends it.

use std::collections::{hash_map::Entry, HashMap, HashSet};

use thiserror::Error;

use crate::doc_state::RangeSet;
use crate::lib0::{DecodeError, Decoder};

/// Why an update is refused; the text goes into the 4400 close reason.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid update: {0}")]
pub struct InvalidUpdate(pub String);

impl From<DecodeError> for InvalidUpdate {
    fn from(e: DecodeError) -> Self {
        InvalidUpdate(e.to_string())
    }
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, InvalidUpdate> {
    Err(InvalidUpdate(reason.into()))
}

/// One struct: a client id and the clock of its first element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub client: u64,
    pub clock: u32,
}

/// What a document already holds, as far as the checks need to know.
pub trait Known {
    /// The next clock of `client`: every struct below it exists.
    fn clock(&self, client: u64) -> u32;
    /// Whether the item at `id` can be a parent: it is (or was) a shared
    /// type, or it is deleted (yjs and yrs then both drop the child).
    fn may_parent(&self, id: Id) -> bool;
    /// Whether all of `start..end` of `client` is already deleted.
    fn is_deleted(&self, client: u64, start: u32, end: u32) -> bool;
}

/// A document that holds nothing.
pub struct Nothing;

impl Known for Nothing {
    fn clock(&self, _: u64) -> u32 {
        0
    }
    fn may_parent(&self, _: Id) -> bool {
        false
    }
    fn is_deleted(&self, _: u64, _: u32, _: u32) -> bool {
        false
    }
}

/// What an accepted update adds to a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Clients whose clock moves on, with their new clock.
    pub clocks: Vec<(u64, u32)>,
    /// Items holding a shared type (possible parents of later items).
    pub types: Vec<Id>,
    /// Deleted ranges `(client, start, end)`, garbage-collected structs included.
    pub deleted: Vec<(u64, u32, u32)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty() && self.types.is_empty() && self.deleted.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept(Effects),
    /// Waits for this struct (or the clocks of a client) to reach the room.
    Hold {
        missing: Id,
    },
    Redundant,
}

/// Nesting of `Any` arrays and objects; lib0 and yrs decode them recursively.
const MAX_NESTING: usize = 100;
/// The content kinds of yjs (`info & 31`).
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;
const STRUCT_GC: u8 = 0;
const STRUCT_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
/// yjs's shared types: array, map, text, xml element, xml fragment, (xml
/// hook: refused, yrs reads it without its name), xml text.
const TYPE_XML_ELEMENT: u64 = 3;
const TYPE_XML_HOOK: u64 = 5;
const MAX_TYPE_REF: u64 = 6;

/// A struct whose integration waits for structs of other clients that the
/// document does not hold yet (they may come earlier in this same update).
#[derive(Debug, Clone, Copy)]
struct Gate {
    clock: u32,
    end: u32,
    deps: [Option<Id>; 3],
}

/// The structs of one client in an update.
#[derive(Debug)]
struct ClientRun {
    client: u64,
    start: u32,
    /// End of the last struct that is not a skip.
    end: u32,
    gates: Vec<Gate>,
    /// Start of a skip over clocks nobody holds, followed by more structs:
    /// yjs cannot integrate past it.
    gap_at: Option<u32>,
    /// Garbage-collected ranges and the clocks of non-type items, to judge
    /// parent references into this update.
    gc: RangeSet,
}

/// An update read against a document.
#[derive(Debug)]
pub struct Analysis {
    runs: Vec<ClientRun>,
    /// Where each client's run is (every lookup by client goes through it,
    /// so none costs more than a handful of steps however many runs there are).
    index: RunIndex,
    types: HashSet<Id>,
    /// Explicit parent references to structs of other items.
    parents: HashSet<Id>,
    deletes: Vec<(u64, u32, u32)>,
}

/// How an update is read: checked against a document, or indexed (a whole
/// document as yrs encoded it, read leniently to learn what it holds).
#[derive(Clone, Copy)]
enum Mode<'a> {
    Check(&'a dyn Known),
    Index,
}

/// Reads `update` against `known` and tells what to do with it: the checks
/// every session, room and document engine runs.
pub fn judge(update: &[u8], known: &dyn Known) -> Result<Verdict, InvalidUpdate> {
    analyze(update, known).map(|analysis| analysis.verdict(known))
}

/// Reads `update` (a Yjs update v1) against `known`, refusing what yjs would
/// throw on or what yrs would read differently.
pub fn analyze(update: &[u8], known: &dyn Known) -> Result<Analysis, InvalidUpdate> {
    let analysis = read_update(update, Mode::Check(known))?;
    check_parents(&analysis, known)?;
    Ok(analysis)
}

/// What a whole document (as yrs encodes it) holds: every client's clock,
/// its shared types and its deleted ranges.
pub fn index_document(update: &[u8]) -> Result<Effects, InvalidUpdate> {
    let analysis = read_update(update, Mode::Index)?;
    let mut effects = Effects {
        clocks: analysis.runs.iter().map(|r| (r.client, r.end)).collect(),
        types: analysis.types.into_iter().collect(),
        deleted: analysis.deletes,
    };
    for run in &analysis.runs {
        effects
            .deleted
            .extend(run.gc.iter().map(|(start, end)| (run.client, start, end)));
    }
    Ok(effects)
}

fn read_update(update: &[u8], mode: Mode) -> Result<Analysis, InvalidUpdate> {
    let mut d = Decoder::new(update);
    let clients = d.read_var_uint()?;
    // Each client needs at least a struct count, an id and a clock.
    if clients > (d.remaining() / 3) as u64 {
        return invalid(format!(
            "declares {clients} clients in {} bytes",
            update.len()
        ));
    }
    let mut analysis = Analysis {
        runs: Vec::with_capacity(clients as usize),
        index: RunIndex::for_clients(clients as usize),
        types: HashSet::new(),
        parents: HashSet::new(),
        deletes: Vec::new(),
    };
    for _ in 0..clients {
        let run = read_client(&mut d, mode, &mut analysis)?;
        if !analysis.index.add(&analysis.runs, run.client) {
            // yjs keeps only the last list of a client, yrs merges them.
            return invalid(format!("client {} appears twice", run.client));
        }
        analysis.runs.push(run);
    }
    read_delete_set(&mut d, mode, &mut analysis.deletes)?;
    d.finish()?;
    Ok(analysis)
}

fn read_u32(d: &mut Decoder, what: &str) -> Result<u32, InvalidUpdate> {
    let value = d.read_var_uint()?;
    u32::try_from(value).or_else(|_| invalid(format!("{what} {value} does not fit in 32 bits")))
}

fn read_id(d: &mut Decoder) -> Result<Id, InvalidUpdate> {
    Ok(Id {
        client: d.read_var_uint()?,
        clock: read_u32(d, "clock")?,
    })
}

fn read_client(
    d: &mut Decoder,
    mode: Mode,
    analysis: &mut Analysis,
) -> Result<ClientRun, InvalidUpdate> {
    let structs = d.read_var_uint()?;
    // Each struct takes at least two bytes.
    if structs > (d.remaining() / 2) as u64 {
        return invalid(format!(
            "declares {structs} structs in {} bytes",
            d.remaining()
        ));
    }
    let client = d.read_var_uint()?;
    let start = read_u32(d, "clock")?;
    let held = match mode {
        Mode::Check(known) => known.clock(client),
        Mode::Index => 0,
    };
    let mut run = ClientRun {
        client,
        start,
        end: start,
        gates: Vec::new(),
        gap_at: None,
        gc: RangeSet::default(),
    };
    let mut clock = start;
    let mut open_skip: Option<u32> = None;
    // The run's items read so far, for origins inside one (checks only; a
    // run of one struct has no earlier item to look in). Not gc structs:
    // yjs merges neighbouring clocks of those whatever their list order.
    let record = matches!(mode, Mode::Check(_)) && structs > 1;
    let mut items_read = Vec::with_capacity(if record { structs as usize } else { 0 });
    for _ in 0..structs {
        let info = d.read_u8()?;
        let end;
        match info {
            STRUCT_SKIP => {
                end = end_of(clock, read_u32(d, "length")?)?;
                if end == clock {
                    return invalid("empty struct");
                }
                if end > held {
                    open_skip.get_or_insert(clock);
                }
                // A skip is no struct of the document: yjs passes over it.
                clock = end;
                continue;
            }
            STRUCT_GC => {
                end = end_of(clock, read_u32(d, "length")?)?;
                if end == clock {
                    return invalid("empty struct");
                }
                run.gc.insert(clock, end);
            }
            // yjs reads these as gc or skip, yrs as items.
            _ if info & 0x1f == STRUCT_GC || info & 0x1f == STRUCT_SKIP => {
                return invalid(format!("struct info {info:#04x}"));
            }
            _ => {
                let item = read_item(d, info, client, clock, mode, &items_read)?;
                end = end_of(clock, item.len)?;
                if item.is_type {
                    analysis.types.insert(Id { client, clock });
                }
                if let Some(parent) = item.parent {
                    analysis.parents.insert(parent);
                }
                if item.deps.iter().any(Option::is_some) {
                    run.gates.push(Gate {
                        clock,
                        end,
                        deps: item.deps,
                    });
                }
                if record {
                    items_read.push((clock, end));
                }
            }
        }
        if let Some(skip_start) = open_skip.take() {
            run.gap_at.get_or_insert(skip_start);
        }
        run.end = end;
        clock = end;
    }
    Ok(run)
}

fn end_of(clock: u32, len: u32) -> Result<u32, InvalidUpdate> {
    clock
        .checked_add(len)
        .map_or_else(|| invalid("clock overflows 32 bits"), Ok)
}

struct Item {
    len: u32,
    is_type: bool,
    /// An explicit parent item (not a root type name).
    parent: Option<Id>,
    /// Dependencies on other clients the document does not hold yet.
    deps: [Option<Id>; 3],
}

fn read_item(
    d: &mut Decoder,
    info: u8,
    client: u64,
    clock: u32,
    mode: Mode,
    run_items: &[(u32, u32)],
) -> Result<Item, InvalidUpdate> {
    let strict = matches!(mode, Mode::Check(_));
    let origin = (info & HAS_ORIGIN != 0).then(|| read_id(d)).transpose()?;
    let right_origin = (info & HAS_RIGHT_ORIGIN != 0)
        .then(|| read_id(d))
        .transpose()?;
    let mut parent = None;
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        match d.read_var_uint()? {
            1 => {
                d.read_var_string()?;
            }
            0 => parent = Some(read_id(d)?),
            // yjs reads any value but 1 as an id, yrs likewise; an encoder writes 0 or 1.
            other if strict => return invalid(format!("parent info {other}")),
            _ => parent = Some(read_id(d)?),
        }
        if info & HAS_PARENT_SUB != 0 {
            d.read_var_string()?;
        }
    }
    let mut deps = [None; 3];
    if let Mode::Check(known) = mode {
        // yjs finds a reference to its own client without waiting for it, so
        // the referenced struct must already be there: below this item's
        // clock (or below what the document holds, for a re-sent struct).
        let own_limit = clock.max(known.clock(client));
        for (slot, reference) in deps.iter_mut().zip([origin, right_origin, parent]) {
            let Some(id) = reference else { continue };
            if id.client == client {
                if id.clock >= own_limit {
                    return invalid(format!(
                        "struct {client}:{clock} refers to {}:{}, which is not before it",
                        id.client, id.clock
                    ));
                }
            } else if id.clock >= known.clock(id.client) {
                *slot = Some(id);
            }
        }
        // Inside one item list order follows the clock: a right origin
        // at or before the origin there is no neighbour yjs ever wrote, and
        // yjs would order concurrent inserts beside it by arrival.
        if let (Some(left), Some(right)) = (origin, right_origin) {
            if left.client == client
                && right.client == client
                && right.clock <= left.clock
                && in_one_item(run_items, right.clock, left.clock)
            {
                return invalid(format!(
                    "struct {client}:{clock} has its right origin {client}:{} at or before its origin {client}:{}",
                    right.clock, left.clock
                ));
            }
        }
    }
    let (len, is_type) = read_content(d, info & 0x1f, strict)?;
    if len == 0 {
        return invalid("empty item");
    }
    Ok(Item {
        len,
        is_type,
        parent,
        deps,
    })
}

/// Whether clocks `first` ≤ `last` lie in one of `items` (first and end
/// clocks, ascending and disjoint).
fn in_one_item(items: &[(u32, u32)], first: u32, last: u32) -> bool {
    let after = items.partition_point(|&(start, _)| start <= last);
    after > 0 && {
        let (start, end) = items[after - 1];
        start <= first && last < end
    }
}

/// Reads an item's content; answers its length in clocks and whether it is
/// a shared type. `strict` refuses what yjs and yrs read differently;
/// lenient reading (of whole documents) only needs the lengths right.
fn read_content(d: &mut Decoder, kind: u8, strict: bool) -> Result<(u32, bool), InvalidUpdate> {
    match kind {
        CONTENT_DELETED => Ok((read_u32(d, "length")?, false)),
        CONTENT_BINARY => {
            d.read_var_bytes()?;
            Ok((1, false))
        }
        CONTENT_STRING => {
            let text = d.read_var_string()?;
            // yjs counts UTF-16 code units.
            let units: usize = text.chars().map(char::len_utf16).sum();
            u32::try_from(units)
                .map(|len| (len, false))
                .or_else(|_| invalid("string too long"))
        }
        CONTENT_EMBED => {
            read_json(d, strict)?;
            Ok((1, false))
        }
        CONTENT_FORMAT => {
            d.read_var_string()?;
            read_json(d, strict)?;
            Ok((1, false))
        }
        CONTENT_TYPE => {
            let type_ref = d.read_var_uint()?;
            if type_ref > MAX_TYPE_REF || (strict && type_ref == TYPE_XML_HOOK) {
                return invalid(format!("shared type {type_ref}"));
            }
            if type_ref == TYPE_XML_ELEMENT || type_ref == TYPE_XML_HOOK {
                d.read_var_string()?;
            }
            Ok((1, true))
        }
        CONTENT_ANY => {
            let count = read_u32(d, "count")?;
            if count as usize > d.remaining() {
                return invalid(format!(
                    "declares {count} values in {} bytes",
                    d.remaining()
                ));
            }
            for _ in 0..count {
                read_any(d, 0, strict)?;
            }
            Ok((count, false))
        }
        CONTENT_DOC => {
            d.read_var_string()?;
            if strict {
                read_doc_options(d)?;
            } else {
                read_any(d, 0, false)?;
            }
            Ok((1, false))
        }
        // yrs reads legacy JSON content with one value more than yjs.
        CONTENT_JSON if strict => invalid("legacy JSON content"),
        CONTENT_JSON => {
            let count = read_u32(d, "count")?;
            if count as usize > d.remaining() {
                return invalid("JSON content longer than its bytes");
            }
            for _ in 0..count {
                d.read_var_string()?;
            }
            Ok((count, false))
        }
        other => invalid(format!("content kind {other}")),
    }
}

/// A JSON string as yjs `JSON.parse`s it and yrs reads it into its `Any`.
fn read_json(d: &mut Decoder, strict: bool) -> Result<(), InvalidUpdate> {
    let text = d.read_var_string()?;
    if !strict {
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).or_else(|e| invalid(format!("embedded JSON: {e}")))?;
    if json_fits_any(&value) {
        Ok(())
    } else {
        invalid("embedded JSON number out of range")
    }
}

/// yrs refuses integers above `i64::MAX`.
fn json_fits_any(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_i64() || n.is_f64(),
        serde_json::Value::Array(values) => values.iter().all(json_fits_any),
        serde_json::Value::Object(map) => map.values().all(json_fits_any),
        _ => true,
    }
}

/// lib0's `readAny`; `strict` refuses what lib0 and yrs read differently.
fn read_any(d: &mut Decoder, depth: usize, strict: bool) -> Result<(), InvalidUpdate> {
    if depth > MAX_NESTING {
        return invalid("values nested too deeply");
    }
    match d.read_u8()? {
        // undefined, null, false, true
        127 | 126 | 121 | 120 => Ok(()),
        125 => match d.read_var_int()? {
            // JavaScript keeps -0, yrs makes it 0.
            (true, 0) if strict => invalid("negative zero"),
            _ => Ok(()),
        },
        124 => d.read_f32().map(drop).map_err(Into::into),
        123 => d.read_f64().map(drop).map_err(Into::into),
        // lib0 reads a BigInt, yrs a plain number.
        122 if strict => invalid("bigint value"),
        122 => d.read_bytes(8).map(drop).map_err(Into::into),
        119 => d.read_var_string().map(drop).map_err(Into::into),
        118 => {
            let entries = d.read_var_uint()?;
            if entries > (d.remaining() / 2) as u64 {
                return invalid("object longer than its bytes");
            }
            for _ in 0..entries {
                // JavaScript would set the prototype instead of a property.
                if d.read_var_string()? == "__proto__" && strict {
                    return invalid("object key __proto__");
                }
                read_any(d, depth + 1, strict)?;
            }
            Ok(())
        }
        117 => {
            let values = d.read_var_uint()?;
            if values > d.remaining() as u64 {
                return invalid("array longer than its bytes");
            }
            for _ in 0..values {
                read_any(d, depth + 1, strict)?;
            }
            Ok(())
        }
        116 => d.read_var_bytes().map(drop).map_err(Into::into),
        tag => invalid(format!("value tag {tag}")),
    }
}

/// Subdocument options as yjs writes them (`gc: false`, `autoLoad: true`);
/// yrs drops other keys, so a fresh client would see different options.
fn read_doc_options(d: &mut Decoder) -> Result<(), InvalidUpdate> {
    if d.read_u8()? != 118 {
        return invalid("subdocument options are not an object");
    }
    let entries = d.read_var_uint()?;
    if entries > 2 {
        return invalid("unknown subdocument options");
    }
    for _ in 0..entries {
        let key = d.read_var_string()?;
        let tag = d.read_u8()?;
        if !matches!(key, "gc" | "autoLoad") || !matches!(tag, 120 | 121) {
            return invalid(format!("subdocument option {key}"));
        }
    }
    Ok(())
}

/// Reads a delete set. Checked strictly, each client comes once with its
/// ranges in ascending order, as every yjs and yrs encoder writes them
/// (sorted and merged): yrs applies ranges given back to front in time
/// quadratic in their number, seconds for a frame of a few hundred KB.
fn read_delete_set(
    d: &mut Decoder,
    mode: Mode,
    deletes: &mut Vec<(u64, u32, u32)>,
) -> Result<(), InvalidUpdate> {
    let strict = matches!(mode, Mode::Check(_));
    let clients = d.read_var_uint()?;
    if clients > (d.remaining() / 2) as u64 {
        return invalid("delete set longer than its bytes");
    }
    let mut seen = HashSet::new();
    for _ in 0..clients {
        let client = d.read_var_uint()?;
        if strict && clients > 1 && !seen.insert(client) {
            return invalid(format!("client {client} appears twice in the delete set"));
        }
        let ranges = d.read_var_uint()?;
        if ranges > (d.remaining() / 2) as u64 {
            return invalid("delete set longer than its bytes");
        }
        let mut previous_end = 0;
        for _ in 0..ranges {
            let clock = read_u32(d, "clock")?;
            let len = read_u32(d, "length")?;
            // yjs throws on an empty range.
            if len == 0 {
                return invalid("empty delete range");
            }
            if strict && clock < previous_end {
                return invalid(format!(
                    "delete range {client}:{clock} is out of order (the previous one ends at {previous_end})"
                ));
            }
            previous_end = end_of(clock, len)?;
            deletes.push((client, clock, previous_end));
        }
    }
    Ok(())
}

/// An explicit parent must be a shared type (or deleted): yjs drops a child
/// of any other item, yrs refuses the whole update.
fn check_parents(analysis: &Analysis, known: &dyn Known) -> Result<(), InvalidUpdate> {
    for &parent in &analysis.parents {
        let acceptable = if parent.clock < known.clock(parent.client) {
            // A re-sent struct says nothing: the document's own item decides.
            known.may_parent(parent)
        } else if let Some(run) = analysis
            .index
            .get(&analysis.runs, parent.client)
            .map(|i| &analysis.runs[i])
            .filter(|r| r.start <= parent.clock && parent.clock < r.end)
        {
            analysis.types.contains(&parent) || run.gc.contains(parent.clock)
        } else {
            // Not there yet: the update waits for it and is judged again.
            true
        };
        if !acceptable {
            return invalid(format!(
                "parent {}:{} is not a shared type",
                parent.client, parent.clock
            ));
        }
    }
    Ok(())
}

/// How far [`Analysis::verdict`] got in one run.
struct Progress {
    /// Integrated up to here.
    clock: u32,
    /// The first gate not passed yet.
    next_gate: usize,
    /// On the stack of runs being integrated (a dependency back to it is a cycle).
    on_stack: bool,
}

/// Position of a client's run in an update: a scan over the usual handful
/// of runs (no table to allocate per update), a map past that.
#[derive(Debug)]
enum RunIndex {
    Scan,
    Map(HashMap<u64, usize>),
}

impl RunIndex {
    const SCAN_UP_TO: usize = 8;

    /// For an update that declares `clients` clients. The map grows as runs
    /// are read: a declared count is only bounded by the update's length.
    fn for_clients(clients: usize) -> Self {
        if clients <= Self::SCAN_UP_TO {
            RunIndex::Scan
        } else {
            RunIndex::Map(HashMap::new())
        }
    }

    /// Records that `client`'s run comes next after `runs`; false if the
    /// client has a run already.
    fn add(&mut self, runs: &[ClientRun], client: u64) -> bool {
        match self {
            RunIndex::Scan => !runs.iter().any(|r| r.client == client),
            RunIndex::Map(map) => match map.entry(client) {
                Entry::Occupied(_) => false,
                Entry::Vacant(slot) => {
                    slot.insert(runs.len());
                    true
                }
            },
        }
    }

    fn get(&self, runs: &[ClientRun], client: u64) -> Option<usize> {
        match self {
            RunIndex::Scan => runs.iter().position(|r| r.client == client),
            RunIndex::Map(map) => map.get(&client).copied(),
        }
    }
}

impl Analysis {
    /// Whether yjs would integrate all of the update at once, given `known`.
    pub fn verdict(&self, known: &dyn Known) -> Verdict {
        let index = &self.index;
        let mut progress: Vec<Progress> = self
            .runs
            .iter()
            .map(|r| Progress {
                clock: known.clock(r.client),
                next_gate: 0,
                on_stack: false,
            })
            .collect();
        let mut stack = Vec::new();
        for first in 0..self.runs.len() {
            if let Err(missing) = self.integrate(first, index, known, &mut progress, &mut stack) {
                return Verdict::Hold { missing };
            }
        }
        let clock_of = |client: u64| match index.get(&self.runs, client) {
            Some(i) => progress[i].clock,
            None => known.clock(client),
        };
        for &(client, start, end) in &self.deletes {
            if end > clock_of(client) {
                // yjs keeps deletions of structs it lacks as a pending delete set.
                return Verdict::Hold {
                    missing: Id {
                        client,
                        clock: start.max(clock_of(client)),
                    },
                };
            }
        }
        let mut effects = Effects::default();
        for (run, progress) in self.runs.iter().zip(&progress) {
            if progress.clock > known.clock(run.client) {
                effects.clocks.push((run.client, progress.clock));
            }
        }
        effects.types = self
            .types
            .iter()
            .filter(|id| id.clock >= known.clock(id.client))
            .copied()
            .collect();
        effects.types.sort();
        let collected = self.runs.iter().flat_map(|run| {
            run.gc
                .iter()
                .map(move |(start, end)| (run.client, start, end))
        });
        for (client, start, end) in self.deletes.iter().copied().chain(collected) {
            if !known.is_deleted(client, start, end) {
                effects.deleted.push((client, start, end));
            }
        }
        if effects.clocks.is_empty() && effects.deleted.is_empty() {
            return Verdict::Redundant;
        }
        Verdict::Accept(effects)
    }

    /// Integrates the structs of run `first` the way yjs does: in clock
    /// order, first integrating the structs of other clients in this update
    /// that a struct depends on. Fails with the first missing dependency (a
    /// dependency cycle counts as missing, as in yjs).
    fn integrate(
        &self,
        first: usize,
        index: &RunIndex,
        known: &dyn Known,
        progress: &mut [Progress],
        stack: &mut Vec<(usize, Option<u32>)>,
    ) -> Result<(), Id> {
        // (run, clock to integrate past; None: the whole run)
        stack.clear();
        stack.push((first, None));
        progress[first].on_stack = true;
        while let Some(&(r, target)) = stack.last() {
            let run = &self.runs[r];
            let at = &progress[r];
            let done = match target {
                Some(clock) => at.clock > clock,
                None => {
                    run.start >= run.end || (at.clock >= run.end && at.next_gate == run.gates.len())
                }
            };
            if done {
                stack.pop();
                progress[r].on_stack = false;
                continue;
            }
            let here = Id {
                client: run.client,
                clock: at.clock,
            };
            if run.start > at.clock {
                // Earlier structs of this client are missing.
                return Err(here);
            }
            let gate = run.gates.get(at.next_gate);
            let free_until = gate
                .map_or(run.end, |g| g.clock)
                .min(run.gap_at.unwrap_or(u32::MAX));
            if free_until > at.clock {
                progress[r].clock = free_until;
                continue;
            }
            let Some(gate) = gate.filter(|g| g.clock <= at.clock) else {
                // A gap, or a dependency past what this update holds.
                return Err(here);
            };
            let mut waiting = None;
            for dep in gate.deps.iter().flatten() {
                let (held, run_of_dep) = match index.get(&self.runs, dep.client) {
                    Some(i) => (progress[i].clock, Some(i)),
                    None => (known.clock(dep.client), None),
                };
                if dep.clock < held {
                    continue;
                }
                match run_of_dep {
                    Some(i) if !progress[i].on_stack => {
                        waiting = Some((i, dep.clock));
                        break;
                    }
                    _ => return Err(*dep),
                }
            }
            match waiting {
                Some((i, clock)) => {
                    progress[i].on_stack = true;
                    stack.push((i, Some(clock)));
                }
                None => {
                    progress[r].clock = progress[r].clock.max(gate.end);
                    progress[r].next_gate += 1;
                }
            }
        }
        Ok(())
    }
}
