package lomas

import (
	"errors"
	"fmt"

	commonv1 "lomas-mesh/clients/go/lomas/common/v1"
)

// Definition is the privacy definition a loss is expressed in.
type Definition int

const (
	// ApproxDP is approximate differential privacy: (Epsilon, Delta).
	ApproxDP Definition = iota + 1
	// PureDP is pure differential privacy: Epsilon (Delta is 0).
	PureDP
	// RhoZCDP is zero-concentrated differential privacy: Rho.
	RhoZCDP
)

func (d Definition) String() string {
	switch d {
	case ApproxDP:
		return "approx_dp"
	case PureDP:
		return "pure_dp"
	case RhoZCDP:
		return "rho_zcdp"
	}
	return fmt.Sprintf("Definition(%d)", int(d))
}

// PrivacyLoss is an exact privacy loss: a cost, a budget, a charge. As in the Python client (and in
// Lomas), a pure-DP loss also reads as (epsilon, delta) with delta 0.
type PrivacyLoss struct {
	Definition Definition
	Epsilon    Decimal // ApproxDP and PureDP
	Delta      Decimal // ApproxDP; 0 for PureDP
	Rho        Decimal // RhoZCDP
}

func (l PrivacyLoss) String() string {
	if l.Definition == RhoZCDP {
		return fmt.Sprintf("(rho=%s)", l.Rho)
	}
	return fmt.Sprintf("(epsilon=%s, delta=%s)", l.Epsilon, l.Delta)
}

func lossFromProto(loss *commonv1.PrivacyLoss) (PrivacyLoss, error) {
	switch {
	case loss.GetApproxDp() != nil:
		return lossFromText(ApproxDP, loss.GetApproxDp().GetEpsilon(), loss.GetApproxDp().GetDelta(), "")
	case loss.GetPureDp() != nil:
		return lossFromText(PureDP, loss.GetPureDp().GetEpsilon(), "0", "")
	case loss.GetRhoZcdp() != nil:
		return lossFromText(RhoZCDP, "", "", loss.GetRhoZcdp().GetRho())
	}
	return PrivacyLoss{}, errors.New("lomas: the platform sent no privacy loss where one was due")
}

// lossFromText parses the decimal strings of a loss (those its definition does not use are "").
func lossFromText(definition Definition, epsilon, delta, rho string) (PrivacyLoss, error) {
	loss := PrivacyLoss{Definition: definition}
	for _, part := range []struct {
		text  string
		value *Decimal
	}{{epsilon, &loss.Epsilon}, {delta, &loss.Delta}, {rho, &loss.Rho}} {
		if part.text == "" {
			continue
		}
		parsed, err := ParseDecimal(part.text)
		if err != nil {
			return PrivacyLoss{}, err
		}
		*part.value = parsed
	}
	return loss, nil
}
