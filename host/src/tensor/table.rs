use super::{BudgetExceeded, TensorBudget};
use anyhow::{Result, anyhow};
use std::collections::HashMap;
use tch::Tensor;

/// What one call created through the tensor API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TensorUsage {
    /// Most tensors alive at once (the two lent ones included).
    pub peak_live: usize,
    /// Elements the budget granted, summed over the call's ops.
    pub elements: u64,
    /// Ops (tensors created) the budget granted.
    pub ops: u64,
}

/// Handles -> tensors for one plugin instance.
///
/// Handles are not reused until the 32-bit counter wraps (after 2^32
/// tensors; the wrap skips handles still in the table), so a handle kept from
/// an earlier call is recognised as stale instead of silently aliasing a
/// newer tensor. Every
/// tensor is released when a call ends; the handles the plugin has not
/// dropped still count against `max_live`, because a wasm runtime keeps an
/// entry per handle the guest holds (host memory, across calls).
pub struct TensorTable {
    slots: HashMap<u32, Tensor>,
    next: u32,
    budget: TensorBudget,
    created_elements: u64,
    created_ops: u64,
    peak_live: usize,
    /// Handles the plugin created and has neither dropped nor returned,
    /// across calls.
    held: usize,
    /// What the last finished call used.
    last: TensorUsage,
    /// Why the last op failed (the native ABI returns only a null handle).
    last_error: Option<anyhow::Error>,
}

impl TensorTable {
    pub fn new(budget: TensorBudget) -> Self {
        Self {
            slots: HashMap::new(),
            next: 1,
            budget,
            created_elements: 0,
            created_ops: 0,
            peak_live: 0,
            held: 0,
            last: TensorUsage::default(),
            last_error: None,
        }
    }

    pub fn budget(&self) -> TensorBudget {
        self.budget
    }

    /// Refuses an allocation of `elements` that would break the budget.
    pub fn reserve(&mut self, elements: u64) -> Result<()> {
        let max = self.budget.max_live;
        if self.slots.len() >= max {
            return Err(BudgetExceeded::Live { max }.into());
        }
        if self.held >= max {
            let held = self.held;
            return Err(BudgetExceeded::Held { held, max }.into());
        }
        if self.created_ops >= self.budget.max_ops_per_call {
            let max = self.budget.max_ops_per_call;
            return Err(BudgetExceeded::Ops { max }.into());
        }
        let total = self.created_elements.saturating_add(elements);
        if total > self.budget.max_elements_per_call {
            let max = self.budget.max_elements_per_call;
            return Err(BudgetExceeded::Elements {
                elements,
                total,
                max,
            }
            .into());
        }
        self.created_elements = total;
        self.created_ops += 1;
        Ok(())
    }

    /// Refuses a shape or dims list longer than the budget's `max_dims`.
    pub fn check_dims(&self, what: &str, len: usize) -> Result<()> {
        if len > self.budget.max_dims {
            return Err(BudgetExceeded::Dims {
                what: what.to_string(),
                len,
                max: self.budget.max_dims,
            }
            .into());
        }
        Ok(())
    }

    /// Stores a tensor the plugin created (its elements were reserved).
    pub fn insert(&mut self, t: Tensor) -> u32 {
        self.held += 1;
        self.store(t)
    }

    /// Stores a tensor the host lends to the call (the plugin only borrows it).
    pub fn lend(&mut self, t: Tensor) -> u32 {
        self.store(t)
    }

    fn store(&mut self, t: Tensor) -> u32 {
        // Wraps rather than panics; `reserve` bounds the handles of one call
        // and a call's tensors are all released at its end, so the table
        // always has room for a fresh number.
        let mut h = self.next;
        while h == 0 || self.slots.contains_key(&h) {
            h = h.wrapping_add(1);
        }
        self.next = h.wrapping_add(1);
        self.slots.insert(h, t);
        self.peak_live = self.peak_live.max(self.slots.len());
        h
    }

    pub fn get(&self, h: u32) -> Result<&Tensor> {
        self.slots
            .get(&h)
            .ok_or_else(|| anyhow!("tensor handle {h} is unknown or stale (from an earlier call?)"))
    }

    /// Moves out the tensor a call returned: the plugin gave its handle up.
    pub fn take(&mut self, h: u32) -> Result<Tensor> {
        let t = self.slots.remove(&h).ok_or_else(|| {
            anyhow!("tensor handle {h} is unknown or stale (from an earlier call?)")
        })?;
        self.held = self.held.saturating_sub(1);
        Ok(t)
    }

    /// The plugin dropped a handle (perhaps of an earlier call's tensor).
    pub fn remove(&mut self, h: u32) {
        self.slots.remove(&h);
        self.held = self.held.saturating_sub(1);
    }

    /// Handles the plugin created and still holds, across calls.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn live(&self) -> usize {
        self.slots.len()
    }

    /// Elements created so far in this call.
    pub fn created_elements(&self) -> u64 {
        self.created_elements
    }

    pub fn peak_live(&self) -> usize {
        self.peak_live
    }

    /// Frees every handle left from an interrupted call, without recording
    /// it as a call: the start of a new one. Backends call it through
    /// [`super::CallScope`], which also ends the call.
    pub fn begin_call(&mut self) {
        self.slots.clear();
        self.created_elements = 0;
        self.created_ops = 0;
        self.peak_live = 0;
    }

    /// Frees every handle, records what the call used (see [`Self::last_call`])
    /// and resets the per-call counters.
    pub fn end_call(&mut self) {
        self.last = TensorUsage {
            peak_live: self.peak_live,
            elements: self.created_elements,
            ops: self.created_ops,
        };
        self.begin_call();
    }

    /// What the last finished call used.
    pub fn last_call(&self) -> TensorUsage {
        self.last
    }

    /// Keeps why an op failed until the backend asks (the native ABI).
    pub fn set_error(&mut self, e: anyhow::Error) {
        self.last_error = Some(e);
    }

    pub fn take_error(&mut self) -> Option<anyhow::Error> {
        self.last_error.take()
    }

    /// Moves the handle counter, so a test can reach its wrap.
    #[cfg(test)]
    pub(crate) fn set_next_handle(&mut self, next: u32) {
        self.next = next;
    }
}

/// Whatever owns a plugin's [`TensorTable`]: a wasm store, a native context.
pub trait HoldsTable {
    fn tensor_table(&mut self) -> &mut TensorTable;
}

impl HoldsTable for TensorTable {
    fn tensor_table(&mut self) -> &mut TensorTable {
        self
    }
}

/// One plugin call's hold on its table, for both backends: made when the
/// call begins, it releases every handle lent to or created in the call and
/// records what the call used when dropped, whichever way the call ends
/// (a result, an error, a trap, or a panic unwinding through the host).
pub struct CallScope<'a, T: HoldsTable + ?Sized> {
    owner: &'a mut T,
}

impl<'a, T: HoldsTable + ?Sized> CallScope<'a, T> {
    pub fn begin(owner: &'a mut T) -> Self {
        owner.tensor_table().begin_call();
        Self { owner }
    }
}

impl<T: HoldsTable + ?Sized> std::ops::Deref for CallScope<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.owner
    }
}

impl<T: HoldsTable + ?Sized> std::ops::DerefMut for CallScope<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.owner
    }
}

impl<T: HoldsTable + ?Sized> Drop for CallScope<'_, T> {
    fn drop(&mut self) {
        self.owner.tensor_table().end_call();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::BudgetExceeded;
    use anyhow::Context;
    use tch::{Device, Kind};

    #[test]
    fn a_call_scope_releases_the_calls_handles_even_when_it_panics() {
        let mut table = TensorTable::new(TensorBudget::default());
        let lent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut call = CallScope::begin(&mut table);
            let h = call.lend(Tensor::zeros([2], (Kind::Float, Device::Cpu)));
            call.full(1.0, &[3], Device::Cpu).unwrap();
            assert_eq!(call.live(), 2);
            if h > 0 {
                panic!("the plugin call unwinds");
            }
            h
        }));
        assert!(lent.is_err());
        assert_eq!(table.live(), 0);
        assert_eq!(table.last_call().peak_live, 2);
    }

    #[test]
    fn a_budget_refusal_is_typed_under_any_context() {
        let mut table = TensorTable::new(TensorBudget {
            max_elements_per_call: 4,
            ..TensorBudget::default()
        });
        let e = table
            .full(0.0, &[5], Device::Cpu)
            .context("full")
            .context("loss")
            .unwrap_err();
        assert!(matches!(
            BudgetExceeded::find(&e),
            Some(BudgetExceeded::Elements { max: 4, .. })
        ));
        let other = table.get(77).unwrap_err();
        assert!(BudgetExceeded::find(&other).is_none());
    }
}
