//! The scheduler on the real stories260K model: sequences that share pages,
//! copy them before writing, are cancelled, wait for a free slot, or ask for
//! too much, each give what one sequence alone gives (a `Session`).

mod common;

use common::model_path;
use std::sync::Arc;
use tinyllm_core::batch::{BatchOptions, Batcher, Job, Request, Ticket};
use tinyllm_core::kv_cache::{KvType, PAGE};
use tinyllm_core::{Error, GenerateConfig, Generation, Model, Session, SessionOptions, Tokenizer};

/// Greedy decoding of exactly `max_tokens` (no stop token).
fn greedy(max_tokens: usize) -> GenerateConfig {
    common::greedy(max_tokens, &[])
}

struct Fixture {
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
}

fn fixture() -> Fixture {
    Fixture {
        model: Arc::new(Model::open(model_path("stories260K.bin")).unwrap()),
        tok: Arc::new(Tokenizer::open(&model_path("tok512.bin")).unwrap()),
    }
}

impl Fixture {
    fn options(&self, max_sequences: usize) -> BatchOptions {
        BatchOptions {
            session: SessionOptions {
                n_threads: Some(2),
                max_batch: Some(32),
                kv_cache: KvType::F16,
                ..Default::default()
            },
            max_sequences: Some(max_sequences),
        }
    }

    fn request(&self, prompt: &[u32], max_tokens: usize) -> Request {
        Request::new(Job::Generate {
            prompt: prompt.to_vec(),
            config: greedy(max_tokens),
            detok: self.tok.clone(),
            constraint: None,
        })
    }

    /// The tokens one sequence alone generates.
    fn alone(&self, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
        let opts = SessionOptions {
            n_threads: Some(2),
            max_batch: Some(32),
            kv_cache: KvType::F16,
            ..Default::default()
        };
        let mut s = Session::new(self.model.clone(), &opts).unwrap();
        let mut g = Generation::new(&mut s, prompt, &greedy(max_tokens)).unwrap();
        g.run(&mut s, self.tok.as_ref()).unwrap();
        g.generated().to_vec()
    }

    /// A prompt: BOS and the text's tokens.
    fn prompt(&self, text: &str) -> Vec<u32> {
        self.tok.encode(text, true)
    }
}

fn generated(t: &Ticket) -> Vec<u32> {
    let s = t.lock();
    assert!(s.done && s.error.is_none(), "{:?}", s.error);
    s.generated.clone()
}

const STORY: &str = "Once upon a time, there was a little girl named Lily. She loved to play \
    outside in the park with her friends. One day, she saw a big red ball under a tree and \
    she wanted to play with it. She ran to the tree and picked up the ball. It was soft and \
    bouncy. Lily threw the ball to her friend Tom, and Tom threw it back. They laughed and \
    played all afternoon until the sun went down and their mothers called them home for dinner";

#[test]
fn sequences_sharing_a_long_prefix_give_what_they_give_alone() {
    let f = fixture();
    let base = f.prompt(STORY);
    assert!(
        base.len() > PAGE + 10,
        "the prefix spans a full page and part of another"
    );
    let prompts: Vec<Vec<u32>> = [" and", " but", " so she"]
        .iter()
        .map(|end| f.prompt(&format!("{STORY}{end}")))
        .collect();
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| f.alone(p, 40)).collect();

    let mut b = Batcher::new(f.model.clone(), &f.options(4)).unwrap();
    // The first computes the prefix; the others take it over when they start.
    let first = f.request(&prompts[0], 40);
    let t0 = first.ticket.clone();
    b.submit(first);
    for _ in 0..base.len().div_ceil(32) + 1 {
        b.step();
    }
    let tickets: Vec<Arc<Ticket>> = prompts[1..]
        .iter()
        .map(|p| {
            let r = f.request(p, 40);
            let t = r.ticket.clone();
            b.submit(r);
            t
        })
        .collect();
    b.step();
    // Sharing: three sequences hold fewer pages than three copies would.
    let pages_each = (base.len() + 2).div_ceil(PAGE);
    let page = b.device().layout().page_bytes();
    assert!(b.kv_bytes_in_use() < 3 * pages_each * page);
    b.run();
    assert_eq!(generated(&t0), want[0]);
    for (t, w) in tickets.iter().zip(&want[1..]) {
        assert_eq!(&generated(t), w);
        assert!(t.lock().stats.reused_tokens >= base.len() - 1);
    }
}

#[test]
fn a_finished_sequence_leaves_its_prefix_for_the_next() {
    let f = fixture();
    let mut b = Batcher::new(f.model.clone(), &f.options(2)).unwrap();
    let p1 = f.prompt(STORY);
    let r = f.request(&p1, 30);
    let t1 = r.ticket.clone();
    b.submit(r);
    b.run();
    // The next prompt is the whole first exchange and more: a chat turn.
    let mut p2 = p1.clone();
    p2.extend(generated(&t1));
    p2.extend(f.tok.encode(" Then", false));
    let r = f.request(&p2, 20);
    let t2 = r.ticket.clone();
    b.submit(r);
    b.run();
    let reused = t2.lock().stats.reused_tokens;
    // The last generated token never went through the model.
    assert!(reused >= p1.len() + 30 - 1, "reused {reused}");
    assert_eq!(generated(&t2), f.alone(&p2, 20));
}

#[test]
fn a_cancelled_sequence_leaves_the_others_alone() {
    let f = fixture();
    let prompts = [
        f.prompt("Tim had a dog"),
        f.prompt("The sun was"),
        f.prompt("Sue"),
    ];
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| f.alone(p, 50)).collect();
    let mut b = Batcher::new(f.model.clone(), &f.options(3)).unwrap();
    let tickets: Vec<Arc<Ticket>> = prompts
        .iter()
        .map(|p| {
            let r = f.request(p, 50);
            let t = r.ticket.clone();
            b.submit(r);
            t
        })
        .collect();
    for _ in 0..10 {
        b.step();
    }
    tickets[1].cancel();
    b.run();
    assert_eq!(generated(&tickets[0]), want[0]);
    assert_eq!(generated(&tickets[2]), want[2]);
    let cancelled = tickets[1].lock();
    assert!(cancelled.done && cancelled.finish_reason.is_none());
    assert!(cancelled.generated.len() < 50);
    assert_eq!(
        cancelled.generated[..],
        want[1][..cancelled.generated.len()]
    );
}

#[test]
fn requests_beyond_max_sequences_wait_and_bad_ones_fail_alone() {
    let f = fixture();
    let mut b = Batcher::new(f.model.clone(), &f.options(2)).unwrap();
    let prompts = [f.prompt("A"), f.prompt("B"), f.prompt("C"), f.prompt("D")];
    let mut tickets = Vec::new();
    for p in &prompts {
        let r = f.request(p, 12);
        tickets.push(r.ticket.clone());
        b.submit(r);
    }
    // Bad requests among them: over the context, an id out of the vocabulary.
    let too_long = f.request(&vec![1; b.context_length() + 1], 5);
    let bad_id = f.request(&[1, 512], 5);
    let (t_long, t_bad) = (too_long.ticket.clone(), bad_id.ticket.clone());
    b.submit(too_long);
    b.submit(bad_id);
    b.step();
    assert_eq!(b.active(), 2, "two run, the rest wait");
    b.run();
    for (t, p) in tickets.iter().zip(&prompts) {
        assert_eq!(generated(t), f.alone(p, 12));
    }
    assert!(matches!(
        t_long.lock().error,
        Some(Error::ContextLength { .. })
    ));
    assert!(matches!(
        t_bad.lock().error,
        Some(Error::InvalidArgument(_))
    ));
}

#[test]
fn logits_jobs_mix_with_generation() {
    let f = fixture();
    let ids = f.prompt(STORY);
    // An f32 cache on both sides: the chunks differ (the batch shares its
    // rows with a decoding sequence), and f16 would round the keys and values
    // of slightly different sums apart.
    let mut s = Session::new(
        f.model.clone(),
        &SessionOptions {
            n_threads: Some(2),
            max_batch: Some(32),
            kv_cache: KvType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    let vocab = f.model.config.vocab_size;
    let mut want = vec![0.0; ids.len() * vocab];
    s.logits_of(&ids, &mut want).unwrap();

    let mut options = f.options(3);
    options.session.kv_cache = KvType::F32;
    let mut b = Batcher::new(f.model.clone(), &options).unwrap();
    let g = f.request(&f.prompt("Tim"), 40);
    let tg = g.ticket.clone();
    b.submit(g);
    b.step();
    let l = Request::new(Job::Logits { ids: ids.clone() });
    let tl = l.ticket.clone();
    b.submit(l);
    b.run();
    let state = tl.lock();
    let got = &state.logits;
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "worst {worst}");
    assert_eq!(generated(&tg).len(), 40);
}

#[test]
fn a_page_shared_with_a_running_sequence_is_copied_before_it_is_written() {
    let f = fixture();
    let base = f.prompt(STORY);
    assert!(base.len() > 2 * PAGE + 4, "the prompt fills two pages");
    let x = base.clone();
    let mut y = base.clone();
    y.extend(f.tok.encode(" and then", false));
    // Z shares X's first page and part of its second, then differs.
    let mut z = base[..PAGE + 36].to_vec();
    z.extend(f.tok.encode(" The cat", false));
    let (want_y, want_z) = (f.alone(&y, 40), f.alone(&z, 20));

    let mut b = Batcher::new(f.model.clone(), &f.options(3)).unwrap();
    let rx = f.request(&x, 2);
    b.submit(rx);
    for _ in 0..base.len().div_ceil(32) {
        b.step(); // X's prompt
    }
    // Y shares X's two full pages while X runs; X then finishes.
    let ry = f.request(&y, 40);
    let ty = ry.ticket.clone();
    b.submit(ry);
    for _ in 0..3 {
        b.step();
    }
    // Z takes over X's finished cache, cut inside the second page that Y
    // still reads: that page must be copied before Z writes into it.
    let rz = f.request(&z, 20);
    let tz = rz.ticket.clone();
    b.submit(rz);
    b.run();
    assert!(tz.lock().stats.reused_tokens >= PAGE + 36);
    assert_eq!(generated(&tz), want_z);
    assert_eq!(generated(&ty), want_y);
}

#[test]
fn hidden_states_decode_alongside_generations() {
    let f = fixture();
    let ids = f.prompt(STORY); // longer than one batch of 32: chunked
    // An f32 cache: with f16 the chunking's last-bit differences in the keys
    // can round to the other side (1e-3 here), which hides nothing of
    // interest but would need a loose bound.
    let mut options = f.options(4);
    options.session.kv_cache = KvType::F32;
    let mut alone = Batcher::new(f.model.clone(), &options).unwrap();
    let r = Request::new(Job::Hidden { ids: ids.clone() });
    let t = r.ticket.clone();
    alone.submit(r);
    alone.run();
    let want = t.lock().logits.clone();
    assert_eq!(want.len(), ids.len() * f.model.config.dim);
    assert!(want.iter().all(|v| v.is_finite()) && want.iter().any(|&v| v.abs() > 1.0));

    let gen_prompt = f.prompt("Lily went");
    let mut solo = Batcher::new(f.model.clone(), &options).unwrap();
    let g = f.request(&gen_prompt, 30);
    let tg = g.ticket.clone();
    solo.submit(g);
    solo.run();
    let want_tokens = generated(&tg);
    let mut b = Batcher::new(f.model.clone(), &options).unwrap();
    let g = f.request(&gen_prompt, 30);
    let tg = g.ticket.clone();
    b.submit(g);
    b.step();
    let r = Request::new(Job::Hidden { ids });
    let th = r.ticket.clone();
    b.submit(r);
    b.run();
    assert_eq!(generated(&tg), want_tokens);
    let got = th.lock().logits.clone();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "hidden states moved by {worst} in a mixed batch"
    );
}
