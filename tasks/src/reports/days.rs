//! Items sorted by day handed out a day at a time: the legacy report from
//! MongoDB turns its aggregation's output into report rows a day at a
//! time (a day's groups, never the whole report).

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// The day of an item, or why it has none.
type DayOf<'a, T, E> = Box<dyn Fn(&T) -> Result<String, E> + Send + 'a>;

/// Items (report rows, or the documents they are made of) that arrive
/// sorted by their day, handed out a day at a time.
pub struct Days<'a, T, E> {
    items: BoxStream<'a, Result<T, E>>,
    day: DayOf<'a, T, E>,
    pending: Option<(String, T)>,
}

impl<'a, T: Send + 'a, E: Send + 'a> Days<'a, T, E> {
    /// Groups `items`, which arrive sorted by `day`.
    pub fn new(
        items: BoxStream<'a, Result<T, E>>,
        day: impl Fn(&T) -> Result<String, E> + Send + 'a,
    ) -> Self {
        Self {
            // Read again after its end whenever the last day is asked for
            // once more.
            items: Box::pin(items.fuse()),
            day: Box::new(day),
            pending: None,
        }
    }

    /// The next day and its items; `None` after the last. A day that
    /// comes back after a later one is handed out again, on its own: the
    /// reader checks the order (see [`Days::next`]'s callers).
    ///
    /// # Errors
    /// Reading an item, or finding its day, failed.
    pub async fn next(&mut self) -> Result<Option<(String, Vec<T>)>, E> {
        let (day, first) = match self.pending.take() {
            Some(pending) => pending,
            None => match self.items.try_next().await? {
                Some(item) => ((self.day)(&item)?, item),
                None => return Ok(None),
            },
        };
        let mut items = vec![first];
        while let Some(item) = self.items.try_next().await? {
            let next = (self.day)(&item)?;
            if next != day {
                self.pending = Some((next, item));
                break;
            }
            items.push(item);
        }
        Ok(Some((day, items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_out_one_day_at_a_time() {
        let items = ["a1", "a2", "b1", "c1", "c2", "a3"].map(|s| Ok::<_, String>(s.to_owned()));
        // A stream that must not be read after its end, as a channel's is.
        let items = futures::stream::unfold(items.into_iter(), |mut rest| async move {
            rest.next().map(|item| (item, rest))
        });
        let mut days = Days::new(Box::pin(items), |s: &String| Ok(s[..1].to_owned()));
        let mut seen = Vec::new();
        while let Some((day, items)) = days.next().await.unwrap() {
            seen.push(format!("{day}:{}", items.join(",")));
        }
        assert_eq!(seen, ["a:a1,a2", "b:b1", "c:c1,c2", "a:a3"]);
        assert!(days.next().await.unwrap().is_none(), "still ended");
    }
}
